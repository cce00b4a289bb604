"""Preference training on the GPU: the per-token linear cross-entropy in bf16 against fp32, and a DPO
micro-batch (chosen and rejected packed, reference with the adapter off) on the fused path against
the plain path. Run on the GPU machine with `pytest -m gpu tests/gpu/test_preference_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from honed.engine.loss import linear_cross_entropy_per_token, reference_linear_cross_entropy_per_token

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_per_token_linear_cross_entropy_bf16():
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4096, 512, device="cuda", generator=g)
    weight = torch.randn(32000, 512, device="cuda", generator=g) * 0.05
    targets = torch.randint(0, 32000, (4096,), device="cuda", generator=g)
    targets[::7] = -100
    upstream = torch.randn(4096, device="cuda", generator=g)

    def run(fn, dtype):
        h, w = hidden.to(dtype).requires_grad_(True), weight.to(dtype).requires_grad_(True)
        out = fn(h, w, targets)
        (out.float() * upstream).sum().backward()
        return out.float(), h.grad.float(), w.grad.float()

    got = run(lambda h, w, t: linear_cross_entropy_per_token(h, w, t, chunk_rows=1000), torch.bfloat16)
    want = run(reference_linear_cross_entropy_per_token, torch.float32)
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-2


@pytest.mark.parametrize("memory", ["none", "offload"])
def test_dpo_micro_batch_fused_matches_plain(tmp_path_factory, memory):
    from honed.bench.preference import random_pairs
    from honed.data.preference_batch import collate_pairs
    from honed.engine import PlainPath
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model
    from honed.testing.lora import lora_model, path_config
    from honed.train.objectives.preference import DPOObjective
    from honed.config import PreferenceConfig

    folder = build_tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"), hidden_size=256, layers=3)
    cfg = path_config(folder, memory=memory)
    objective = DPOObjective()
    objective.settings = PreferenceConfig(beta=0.1)
    probe = lora_model(folder, dtype=torch.float32, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")
    pairs = random_pairs(vocab_size=probe.config.vocab_size, first_token_id=5, seq=128, n=3)

    def run_path(fused: bool):
        model = lora_model(folder, dtype=torch.float32, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")
        path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda"))) if fused else PlainPath()
        model = path.prepare(model)
        model.train()
        batch = collate_pairs([[p] for p in pairs], pad_id=0, packing=True, padding_free=path.padding_free)
        batch = {k: v.cuda() for k, v in batch.items()}
        out = objective.loss(path, model, batch)
        (out.loss_sum / out.weight).backward()
        return float(out.loss_sum.detach()), out.metrics, {k: p.grad for k, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref_metrics, ref_grads = run_path(fused=False)
    loss, metrics, grads = run_path(fused=True)
    assert abs(loss - ref_loss) <= 1e-4 * max(abs(ref_loss), 1.0)
    assert metrics["rewards/margin"] == pytest.approx(ref_metrics["rewards/margin"], abs=1e-3)
    for k in ref_grads:
        assert rel(grads[k], ref_grads[k]) <= 1e-3, k
