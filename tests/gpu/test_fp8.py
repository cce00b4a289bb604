"""`training.precision: fp8` on the GPU: `torch._scaled_mm` against the plain-torch fp8 reference, the
fused LoRA node over an fp8 base against fp32 references, and `honed train` in fp8 against bf16 (loss
curve and base-weight memory). Run on a GPU of compute capability 8.9+ with
`pytest -m gpu tests/gpu/test_fp8.py`.

Error bounds (relative Frobenius norms):
- fp8 GEMM vs the fp32 reference of the same quantised operands: 1e-2, the engine's bf16 bound; only
  accumulation order and the bf16 output rounding (~0.3%) differ.
- fp8 LoRA output vs fp32 on its dequantised weights: 4e-2. The input rows are rounded to e4m3 (3
  mantissa bits): half a step is 2^-4 of a value, and on Gaussian rows the RMS error is 2^-3/sqrt(24)
  ≈ 2.6% (measured 2.6% with the plain-torch reference), which a dot product carries over as is.
- its gradients: dA and dB 1e-2, as in bf16 (they read the unrounded x and dy); dx 4e-2, since its
  base part dy W runs in fp8 with the rows of dy·scale rounded to e4m3, as x's are in forward.
- fp8 dx (`fp8_dgrad`) vs the fp32 reference of the same quantised operands: 1e-2, as for forward.
- fp8 LoRA output vs the original bf16 weights: 5e-2. x and W are each rounded once: sqrt(2) × 2.6%
  ≈ 3.7% (measured 3.7%).
"""

from __future__ import annotations

import logging

import pytest
import torch

from honed.engine.fp8 import (
    FP8_DTYPE,
    SCALE_NAME,
    dequantize_weight,
    fp8_dgrad,
    fp8_linear,
    quantize_weight_rowwise,
    reference_fp8_dgrad,
    reference_fp8_linear,
)
from honed.engine.lora import lora_linear, reference_lora_linear
from honed.engine.settings import resolve_engine_settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
        reason="needs a CUDA GPU of compute capability 8.9+ (fp8 tensor cores)",
    ),
]
TOL = 1e-2  # bf16, as in test_engine.py
FP8_FORWARD_TOL = 4e-2  # input rows rounded to e4m3 (see the module docstring)
FP8_VS_BF16_WEIGHTS_TOL = 5e-2  # input rows and weights both rounded to e4m3


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("rows", [4096, 1000])  # 1000: the row count need not be a multiple of 16
@pytest.mark.parametrize("with_bias", [False, True])
def test_scaled_mm_matches_the_plain_torch_fp8_reference(rows, with_bias):
    """Checks torch._scaled_mm's contract as fp8_linear uses it: column-major mat2 (w_fp8.t()), rowwise
    scales (rows, 1) and (1, out), bias, bf16 output. A scale applied along the wrong axis, or a
    transposed operand, would miss by far more than the bound."""
    torch.manual_seed(0)
    x = torch.randn(rows, 2048, device="cuda").bfloat16()
    w = torch.randn(1024, 2048, device="cuda") * torch.logspace(-2, 0, 1024, device="cuda")[:, None]  # channels of unequal size
    bias = torch.randn(1024, device="cuda").bfloat16() if with_bias else None
    w_fp8, scale = quantize_weight_rowwise(w.bfloat16())
    got = fp8_linear(x, w_fp8, scale, bias)
    want = reference_fp8_linear(x, w_fp8, scale, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1024)
    assert torch.isfinite(got).all()
    assert rel(got, want) <= TOL
    # Training calls it under bf16 autocast, which must leave the fp8 operands of _scaled_mm alone.
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert rel(fp8_linear(x, w_fp8, scale, bias), got) <= 1e-3
    # fp32 inputs outside autocast: the same GEMM, the output cast back to the input's dtype.
    got32 = fp8_linear(x.float(), w_fp8, scale, None if bias is None else bias.float())
    assert got32.dtype == torch.float32 and rel(got32, want) <= TOL


@pytest.mark.parametrize("rows", [4096, 1000])
def test_fp8_dgrad_matches_the_plain_torch_reference(rows):
    """dx = dy W on fp8 tensor cores: the scale folded into dy's columns, W passed as the column-major
    view of its transposed copy. A scale on the wrong axis or an untransposed W misses by far more."""
    torch.manual_seed(1)
    w = torch.randn(1024, 2048, device="cuda") * torch.logspace(-2, 0, 1024, device="cuda")[:, None]
    dy = torch.randn(rows, 1024, device="cuda").bfloat16()
    w_fp8, scale = quantize_weight_rowwise(w.bfloat16())
    got = fp8_dgrad(dy, w_fp8, scale)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 2048) and torch.isfinite(got).all()
    assert rel(got, reference_fp8_dgrad(dy, w_fp8, scale)) <= TOL
    assert rel(got, dy.float() @ dequantize_weight(w_fp8, scale, torch.float32)) <= FP8_FORWARD_TOL
    assert w_fp8.is_contiguous() and w_fp8.shape == (1024, 2048)  # the stored weight is left as it was


@pytest.mark.parametrize("with_bias", [False, True])
def test_fp8_lora_linear_matches_fp32_references(with_bias):
    torch.manual_seed(2)
    x = torch.randn(4, 512, 2048, device="cuda")
    w = torch.randn(1024, 2048, device="cuda") * 0.02
    a = (torch.randn(16, 2048, device="cuda") * 0.02).requires_grad_(True)
    b = (torch.randn(1024, 16, device="cuda") * 0.02).requires_grad_(True)
    bias = torch.randn(1024, device="cuda") * 0.02 if with_bias else None
    w_fp8, scale = quantize_weight_rowwise(w.bfloat16())
    dense = dequantize_weight(w_fp8, scale, torch.float32)
    up = torch.randn(4, 512, 1024, device="cuda")

    # A and B stay fp32 (master weights), as in training; the fused node computes in bf16 and fp8.
    got_x = x.detach().bfloat16().requires_grad_(True)
    ga, gb = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    got = lora_linear(got_x, w_fp8, ga, gb, 2.0, None if bias is None else bias.bfloat16(), fp8_scale=scale)
    (got.float() * up).sum().backward()
    assert got.dtype == torch.bfloat16
    assert ga.grad.dtype == torch.float32 and gb.grad.dtype == torch.float32

    # (a) the fp32 reference of the same (dequantised fp8) weights
    rx, ra, rb = x.detach().clone().requires_grad_(True), a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ref = reference_lora_linear(rx, dense, ra, rb, 2.0, bias)
    (ref * up).sum().backward()
    assert rel(got, ref) <= FP8_FORWARD_TOL
    for g, r in ((ga.grad, ra.grad), (gb.grad, rb.grad)):
        assert rel(g, r) <= TOL
    assert rel(got_x.grad, rx.grad) <= FP8_FORWARD_TOL  # dy·scale rounded to e4m3 for the base's dx

    # (b) the original weights, before fp8
    with torch.no_grad():
        original = reference_lora_linear(x, w.bfloat16().float(), a, b, 2.0, bias)
    assert rel(got, original) <= FP8_VS_BF16_WEIGHTS_TOL


# ---- the whole path -------------------------------------------------------------------------


def lora_model(folder, dtype):
    from honed.testing.lora import lora_model as build

    return build(folder, dtype=dtype, r=8, alpha=16, b_std=0.0, device="cuda", attn_implementation="sdpa")


def test_fused_path_stores_the_lora_bases_in_fp8_and_frees_half_their_memory(tmp_path):
    from honed.engine.fused import FusedPath
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    # hidden 512, 4 heads of 128, 2 KV heads (k/v: 256), MLP 1024: every dimension a multiple of 16.
    folder = build_tiny_model("llama3", tmp_path / "llama", hidden_size=512, layers=4)
    cfg = path_config(folder, precision="fp8", memory_budget_gib=8)  # a budget keeps fp8 as asked (no measured choice)
    model = lora_model(folder, torch.bfloat16)
    bases = [m.base_layer for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert len(bases) == 4 * 7
    bf16_bytes = sum(b.weight.numel() * b.weight.element_size() for b in bases)
    torch.cuda.synchronize()
    allocated_before = torch.cuda.memory_allocated()

    model = FusedPath(resolve_engine_settings(cfg, torch.device("cuda"))).prepare(model)

    assert all(b.weight.dtype == FP8_DTYPE for b in bases), "FusedPath.prepare did not call honed.engine.fp8.prepare_fp8"
    fp8_bytes = sum(b.weight.numel() * b.weight.element_size() for b in bases)
    scale_bytes = sum(getattr(b, SCALE_NAME).numel() * 4 for b in bases)
    assert 2 * fp8_bytes == bf16_bytes
    torch.cuda.synchronize()
    freed = allocated_before - torch.cuda.memory_allocated()
    expected = bf16_bytes - fp8_bytes - scale_bytes
    assert freed >= 0.9 * expected, (freed, expected)  # the bf16 copies are gone, not just hidden


def test_honed_train_in_fp8_follows_the_bf16_loss_curve(tmp_path, caplog):
    from honed.testing.lora import tiny_train_losses

    # lr 1e-3, not test_engine.py's 3e-3: at 3e-3 the bf16 run itself spikes between steps, and the
    # comparison would measure that chaos rather than fp8 (CPU simulation: up to 4.7% vs 0.2-1%).
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        losses = tiny_train_losses(tmp_path, "llama3", {"fp8": {"precision": "fp8", "memory_budget_gib": 8}, "bf16": {"precision": "bf16"}}, max_steps=30, learning_rate=1e-3)
    assert "training path: fused" in caplog.text
    assert "fp8: 14 LoRA base projections stored in float8 e4m3" in caplog.text, "FusedPath.prepare did not call prepare_fp8"
    fp8, bf16 = losses["fp8"], losses["bf16"]
    print("fp8 ", [round(x, 3) for x in fp8])
    print("bf16", [round(x, 3) for x in bf16])
    assert fp8[-1] < 0.8 * fp8[0]  # it learns
    devs = [abs(a - b) / b for a, b in zip(fp8, bf16)]
    assert max(devs) <= 0.02, devs  # CPU simulation of the same math: at most 0.2%


def test_under_memory_auto_fp8_measures_both_precisions_and_stores_the_bases_it_chose(tmp_path):
    """The measured choice (`engine.fp8_choice`) on this GPU: real timings of one layer, both memory
    plans, and bases stored in the precision it reports."""
    from honed.engine.fused import FusedPath
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    folder = build_tiny_model("llama3", tmp_path / "llama", hidden_size=512, layers=4)
    model = lora_model(folder, torch.bfloat16)
    path = FusedPath(resolve_engine_settings(path_config(folder, precision="fp8"), torch.device("cuda")))
    path.prepare(model)
    choice = path.describe()["fp8_choice"]
    print(choice)
    assert choice is not None and choice["bases"] in ("bf16", "fp8")
    for precision in ("bf16", "fp8"):
        times = choice["layer_base_ms"][precision]
        assert times["forward_ms"] > 0 and times["dx_ms"] > 0 and 0 < times["rebuild_forward_ms"] < times["forward_ms"]
    assert choice["attention_forward_ms"] > 0
    expected = FP8_DTYPE if choice["bases"] == "fp8" else torch.bfloat16
    bases = [m.base_layer for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert {b.weight.dtype for b in bases} == {expected}


def test_an_fp8_run_records_the_bases_it_chose_and_its_resume_keeps_them(tmp_path):
    """The measured choice is made once: every checkpoint records it, and a resumed run takes it
    without measuring again (timings vary; the bases must not)."""
    import json

    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train.sft import train

    base = build_tiny_model("llama3", tmp_path / "base", hidden_size=256, layers=2)
    data = write_numbered_qa(tmp_path / "qa.jsonl")
    out = tmp_path / "run"
    train(train_config(base, data, out, max_steps=4, learning_rate=1e-3, precision="fp8", save_steps=2), show_progress=False)
    chosen = json.loads((out / "run_info.json").read_text())["fp8_choice"]["bases"]
    states = sorted(out.glob("checkpoints/checkpoint-*/trainer_state.json"))
    assert states and {json.loads(p.read_text())["fp8_bases"] for p in states} == {chosen}
    first = states[0].parent
    resumed = train(train_config(base, data, tmp_path / "resumed", max_steps=4, learning_rate=1e-3, precision="fp8", save_steps=2,
                                 resume=str(first)), show_progress=False)
    assert "fp8_choice" not in json.loads((tmp_path / "resumed" / "run_info.json").read_text())  # taken from the checkpoint, not measured
    assert resumed.losses
