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
