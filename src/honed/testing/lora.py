"""LoRA models and chat data for engine tests: one place for what every path test builds.

peft starts each LoRA B at zero, which would hide a wrong gradient of A (it gets multiplied by B),
so `lora_model` draws B at random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def lora_model(folder, *, dtype=torch.float32, r: int = 4, alpha: int = 8, b_std: float = 0.05, device: str | None = None, **load_kwargs):
    """A transformers model from `folder` with LoRA on every linear layer and B ~ N(0, b_std)."""
    from transformers import AutoModelForCausalLM

    from honed.config import LoraSettings
    from honed.model.adapters import apply_lora

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **load_kwargs)
    if device is not None:
        model = model.to(device)
    model = apply_lora(model, LoraSettings(r=r, alpha=alpha))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, b_std)
    return model


def write_numbered_qa(path: Path, n: int = 32) -> Path:
    """`n` short question/answer chats (OpenAI messages, JSONL) that a tiny model learns in a few steps."""
    rows = [{"messages": [{"role": "user", "content": f"What is test {i}?"}, {"role": "assistant", "content": f"Test {i} measures marker {i * 7}."}]}
            for i in range(n)]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)


def path_config(folder, **training):
    """A config for driving a training path directly (`FusedPath(resolve_engine_settings(cfg, device))`) over the model in
    `folder`: rows of 256 tokens, batch 2, `training` keys on top."""
    from honed.config import config_from_dict

    return config_from_dict({"model": {"name_or_path": str(folder)}, "data": {"train": ["x"], "max_seq_length": 256},
                             "training": {"batch_size": 2, **training}})


def train_config(base, data, output_dir, *, max_steps: int, learning_rate: float, packing: bool | None = None, **training):
    """A `honed train` config for a tiny model learning `write_numbered_qa` data: LoRA r=16, rows of
    128 tokens, batch 4, seed 1, no TensorBoard; `training` keys on top."""
    from honed.config import config_from_dict

    data_settings = {"train": [str(data)], "max_seq_length": 128} | ({} if packing is None else {"packing": packing})
    return config_from_dict({
        "model": {"name_or_path": str(base)}, "data": data_settings, "lora": {"r": 16, "alpha": 32},
        "training": {"output_dir": str(output_dir), "max_steps": max_steps, "batch_size": 4, "learning_rate": learning_rate,
                     "tensorboard": False, "seed": 1, **training},
    })


def tiny_train_losses(folder, family: str, variants: dict[str, dict], **common) -> dict[str, list[float]]:
    """`honed train` on a tiny `family` model (hidden 256, 2 layers) learning `write_numbered_qa`
    data, once per variant: `train_config` keys of `common` with the variant's on top, each run in
    folder/<variant>. The per-step losses by variant, for comparing training paths or precisions."""
    from honed.testing import build_tiny_model
    from honed.train.sft import train

    folder = Path(folder)
    base = build_tiny_model(family, folder / "base", hidden_size=256, layers=2)
    data = write_numbered_qa(folder / "qa.jsonl")
    return {name: train(train_config(base, data, folder / name, **(common | overrides)), show_progress=False).losses
            for name, overrides in variants.items()}


def train_path_steps(path, model, steps, *, lr: float, autocast_dtype=None):
    """AdamW steps through a training path as `honed train` takes them: each step's micro-batches
    (`steps` is a list of lists of batches) accumulate gradients, then clip to 1.0, step, and
    zero_grad to None; each loss is dropped after its backward. Returns (every micro-batch's loss,
    the trainable weights at the end, as fp32 copies)."""
    import contextlib

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for micro in steps:
        for batch in micro:
            device = batch["input_ids"].device.type
            with torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext():
                loss_sum, n = path.loss_sum(model, batch)
            (loss_sum / n).backward()
            losses.append(float(loss_sum.detach() / n))
            del loss_sum  # a graph kept into the next forward would stop a CUDA graph capture (engine.graphs)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, {k: p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}
