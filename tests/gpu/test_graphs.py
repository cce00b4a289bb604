"""CUDA graphs of the decoder stack (engine.graphs, training.cuda_graphs) against the eager stack on
the GPU: the same losses and LoRA weights over AdamW steps in bf16, under each memory plan, with
varlen attention, offload copies on their side stream and QLoRA's NF4 bases. Run on the GPU machine
with `pytest -m gpu tests/gpu/test_graphs.py`."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def train_steps(folder, memory: str, cuda_graphs: bool, steps, quantized: bool = False):
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing.lora import lora_model, path_config, train_path_steps

    cfg = path_config(folder, memory=memory, cuda_graphs=cuda_graphs)
    torch.manual_seed(0)  # peft draws LoRA A from the global generator: both runs start from the same weights
    if quantized:  # QLoRA as honed train loads it: NF4 bases, peft's k-bit preparation
        from honed.config import LoraSettings, ModelConfig, QuantizationSettings
        from honed.model.adapters import apply_lora
        from honed.model.load import load_model

        model, _ = load_model(ModelConfig(name_or_path=str(folder)), device=torch.device("cuda"), quantization=QuantizationSettings())
        model = apply_lora(model, LoraSettings(r=8, alpha=16), quantized=True)
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    else:
        model = lora_model(folder, dtype=torch.bfloat16, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")
    path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda")))
    model = path.prepare(model)
    losses, weights = train_path_steps(path, model, steps, lr=1e-3, autocast_dtype=torch.bfloat16)
    return losses, weights, path


def make_steps(vocab: int, micro_batches: int = 1, count: int = 5):
    g = torch.Generator().manual_seed(11)
    steps = []
    for _ in range(count):
        micro = []
        for _ in range(micro_batches):
            ids = torch.randint(5, vocab, (2, 256), generator=g).cuda()
            labels = ids.clone()
            labels[:, :40] = -100
            # Packed rows: the same boundaries in every batch, so one capture serves all of them.
            positions = torch.cat([torch.arange(100), torch.arange(156)]).expand(2, -1).cuda()
            micro.append({"input_ids": ids, "labels": labels, "position_ids": positions})
        steps.append(micro)
    return steps


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
@pytest.mark.parametrize("memory", ["none", "checkpoint", "offload"])
def test_graphed_stack_trains_as_the_eager_one(tmp_path_factory, family, memory):
    from honed.testing import build_tiny_model

    folder = build_tiny_model(family, tmp_path_factory.mktemp(family), hidden_size=256, layers=3)
    from transformers import AutoConfig

    steps = make_steps(AutoConfig.from_pretrained(folder).vocab_size, micro_batches=2 if memory == "offload" else 1)
    eager_losses, eager_w, _ = train_steps(folder, memory, False, steps)
    graph_losses, graph_w, path = train_steps(folder, memory, True, steps)
    summary = path.graphs.summary()
    assert path.attention == "varlen"
    assert summary["captures"] == 1 and summary["eager_runs"] == 1 and summary["replays"] == len(eager_losses) - 1, summary
    assert graph_losses == pytest.approx(eager_losses, rel=2e-3)
    # Run alone, this file's graphed weights equal the eager ones bit for bit. After the rest of the
    # GPU suite the two offload runs strayed by 1.1e-3 and 1.6e-3 in layer 0's q LoRA A: rounding-sized
    # (likely kernels the suite's earlier shapes had compiled or tuned differently), which AdamW turns
    # into weight differences. A real fault (a gradient lost, doubled or stale) moves them far more.
    for k in eager_w:
        err = float((graph_w[k] - eager_w[k]).norm() / eager_w[k].norm())
        assert err <= 5e-3, (k, err)
    assert path.graphs.held_bytes() > 0


def test_graphed_stack_over_nf4_bases(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoConfig

    from honed.testing import build_tiny_model

    folder = build_tiny_model("llama3", tmp_path / "m", hidden_size=256, layers=3)
    steps = make_steps(AutoConfig.from_pretrained(folder).vocab_size)
    eager_losses, eager_w, _ = train_steps(folder, "offload", False, steps, quantized=True)
    graph_losses, graph_w, path = train_steps(folder, "offload", True, steps, quantized=True)
    assert path.graphs.summary()["replays"] == len(eager_losses) - 1
    assert graph_losses == pytest.approx(eager_losses, rel=2e-3)
    for k in eager_w:
        assert float((graph_w[k] - eager_w[k]).norm() / eager_w[k].norm()) <= 1e-3, k
