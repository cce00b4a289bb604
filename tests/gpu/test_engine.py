"""The fused engine on the GPU: each kernel in bf16 against an fp32 reference (relative error
≤ 1e-2 on outputs and gradients), the whole fused path against the plain path, and `honed train`
taking the fused path. Run on the GPU machine with `pytest -m gpu tests/gpu/test_engine.py`."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from honed.engine.fp8 import (
    dequantize_weight,
    fp8_device_problem,
    quantize_weight_rowwise,
)
from honed.engine.grouped import DenseBases, Fp8Bases, grouped_lora_linear
from honed.engine.layers import (
    packed_swiglu,
    reference_rms_norm,
    reference_rope,
    reference_swiglu,
    rms_norm,
    rope,
    swiglu,
)
from honed.engine.lora import lora_linear, reference_lora_linear
from honed.engine.loss import (
    linear_cross_entropy_sum,
    reference_linear_cross_entropy_sum,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOL = 1e-2


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(fn, inputs, dtype, upstream):
    xs = [x.detach().to(dtype).requires_grad_(x.requires_grad) for x in inputs]
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    (out.float() * upstream).sum().backward() if out.ndim else (out.float() * upstream).backward()
    return out.float(), [x.grad.float() if x.grad is not None else None for x in xs]


def check(fast, ref, inputs):
    with torch.no_grad():
        shape = ref(*[x.float() for x in inputs]).shape if not isinstance(ref(*[x.float() for x in inputs]), tuple) else ()
    upstream = torch.randn(shape, device="cuda") if shape else torch.tensor(0.37, device="cuda")
    got, g_got = run(fast, inputs, torch.bfloat16, upstream)
    want, g_want = run(ref, inputs, torch.float32, upstream)
    assert torch.isfinite(got).all()
    assert rel(got, want) <= TOL
    for a, b in zip(g_got, g_want):
        if b is not None:
            assert rel(a, b) <= TOL


def test_chunked_cross_entropy_bf16():
    torch.manual_seed(0)
    h = torch.randn(4096, 1024, device="cuda", requires_grad=True)
    w = (torch.randn(32000, 1024, device="cuda") * 0.05)
    t = torch.randint(0, 32000, (4096,), device="cuda")
    t[:500] = -100
    check(lambda h, w: linear_cross_entropy_sum(h, w, t, chunk_rows=1000)[0],
          lambda h, w: reference_linear_cross_entropy_sum(h, w, t)[0], [h, w])


def test_chunked_cross_entropy_weight_grad_bf16():
    torch.manual_seed(1)
    h = torch.randn(2048, 512, device="cuda", requires_grad=True)
    w = (torch.randn(8000, 512, device="cuda") * 0.05).requires_grad_(True)
    t = torch.randint(0, 8000, (2048,), device="cuda")
    check(lambda h, w: linear_cross_entropy_sum(h, w, t, chunk_rows=512)[0],
          lambda h, w: reference_linear_cross_entropy_sum(h, w, t)[0], [h, w])


def test_fused_lora_linear_bf16():
    torch.manual_seed(2)
    x = torch.randn(4, 512, 2048, device="cuda", requires_grad=True)
    w = torch.randn(1024, 2048, device="cuda") * 0.02
    a = (torch.randn(16, 2048, device="cuda") * 0.02).requires_grad_(True)
    b = (torch.randn(1024, 16, device="cuda") * 0.02).requires_grad_(True)
    # A and B stay fp32 (master weights) in both, as in training; the fast node computes in bf16.
    got_x = x.detach().bfloat16().requires_grad_(True)
    ga, gb = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    up = torch.randn(4, 512, 1024, device="cuda")
    (lora_linear(got_x, w.bfloat16(), ga, gb, 2.0).float() * up).sum().backward()
    rx, ra, rb = x.detach().clone().requires_grad_(True), a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ref = reference_lora_linear(rx, w, ra, rb, 2.0)
    (ref * up).sum().backward()
    assert ga.grad.dtype == torch.float32 and gb.grad.dtype == torch.float32
    assert rel(lora_linear(got_x, w.bfloat16(), ga, gb, 2.0), ref) <= TOL
    for g, r in ((got_x.grad, rx.grad), (ga.grad, ra.grad), (gb.grad, rb.grad)):
        assert rel(g, r) <= TOL


def test_fused_lora_over_nf4_base():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(3)
    base = bnb.nn.Linear4bit(1024, 512, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    base.weight = bnb.nn.Params4bit(torch.randn(512, 1024) * 0.02, requires_grad=False, quant_type="nf4")
    base = base.cuda()
    dense = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
    x = torch.randn(256, 1024, device="cuda")
    a = (torch.randn(8, 1024, device="cuda") * 0.02).requires_grad_(True)
    b = (torch.randn(512, 8, device="cuda") * 0.02).requires_grad_(True)
    xg = x.bfloat16().requires_grad_(True)
    out = lora_linear(xg, base.weight, a, b, 1.0)
    up = torch.randn_like(out.float())
    (out.float() * up).sum().backward()
    xr, ar, br = x.clone().requires_grad_(True), a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ref = reference_lora_linear(xr, dense, ar, br, 1.0)
    (ref * up).sum().backward()
    assert rel(out, ref) <= TOL and rel(xg.grad, xr.grad) <= TOL and rel(a.grad, ar.grad) <= TOL and rel(b.grad, br.grad) <= TOL


def test_rms_norm_bf16():
    torch.manual_seed(4)
    x = torch.randn(8192, 2048, device="cuda", requires_grad=True)
    w = (torch.rand(2048, device="cuda") + 0.5).requires_grad_(True)
    check(lambda x, w: rms_norm(x, w, 1e-5), lambda x, w: reference_rms_norm(x, w, 1e-5), [x, w])


def test_swiglu_bf16():
    torch.manual_seed(5)
    g = (torch.randn(8192, 4096, device="cuda") * 2).requires_grad_(True)
    u = torch.randn(8192, 4096, device="cuda", requires_grad=True)
    check(swiglu, reference_swiglu, [g, u])


def test_packed_swiglu_bf16():
    torch.manual_seed(6)
    gate_up = (torch.randn(4096, 2 * 3072, device="cuda") * 2).requires_grad_(True)
    check(packed_swiglu, lambda t: reference_swiglu(t[:, :3072], t[:, 3072:]), [gate_up])


def grouped_case(seed, ranks=(16, 16, 8), outs=(2048, 512, 512), scales=(2.0, 2.0, 0.5), width=2048, bias=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(2, 1024, width, device="cuda", generator=g)
    ws = [torch.randn(o, width, device="cuda", generator=g) * 0.02 for o in outs]
    as_ = [(torch.randn(r, width, device="cuda", generator=g) * 0.02) for r in ranks]
    bs = [(torch.randn(o, r, device="cuda", generator=g) * 0.02) for o, r in zip(outs, ranks)]
    biases = [torch.randn(o, device="cuda", generator=g) * 0.02 if bias else None for o in outs]
    return x, ws, as_, bs, list(scales), biases


def grouped_against_fp32_reference(x, bases, dense, as_, bs, scales, biases):
    """The grouped node in bf16 (fp32 masters) and the separate fp32 reference projections: outputs,
    dx and every dA / dB."""
    up = torch.randn(*x.shape[:-1], sum(w.shape[0] for w in dense), device="cuda")
    got_x = x.bfloat16().requires_grad_(True)
    got_a = [a.clone().requires_grad_(True) for a in as_]
    got_b = [b.clone().requires_grad_(True) for b in bs]
    got = grouped_lora_linear(got_x, bases, got_a, got_b, scales)
    (got.float() * up).sum().backward()
    ref_x = x.clone().requires_grad_(True)
    ref_a = [a.clone().requires_grad_(True) for a in as_]
    ref_b = [b.clone().requires_grad_(True) for b in bs]
    ref = torch.cat([reference_lora_linear(ref_x, w, a, b, s, bias) for w, a, b, s, bias in zip(dense, ref_a, ref_b, scales, biases)], -1)
    (ref * up).sum().backward()
    assert all(t.grad.dtype == torch.float32 for t in got_a + got_b)
    return rel(got, ref), rel(got_x.grad, ref_x.grad), [rel(g.grad, r.grad) for g, r in zip(got_a + got_b, ref_a + ref_b)]


@pytest.mark.parametrize("bias", [False, True])
def test_grouped_lora_over_dense_bases_bf16(bias):
    x, ws, as_, bs, scales, biases = grouped_case(8, bias=bias)
    bases = DenseBases([w.bfloat16() for w in ws], [None if b is None else b.bfloat16() for b in biases])
    out_err, dx_err, adapter_errs = grouped_against_fp32_reference(x, bases, ws, as_, bs, scales, biases)
    assert out_err <= TOL and dx_err <= TOL and max(adapter_errs) <= TOL, (out_err, dx_err, adapter_errs)


def test_grouped_lora_over_nf4_bases():
    bnb = pytest.importorskip("bitsandbytes")
    x, ws, as_, bs, scales, biases = grouped_case(9, ranks=(16, 16), outs=(1024, 1024), scales=(1.0, 1.0))
    quantised = []
    for w in ws:
        layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
        quantised.append(layer.cuda().weight)
    dense = [bnb.functional.dequantize_4bit(q.data, q.quant_state).float() for q in quantised]
    out_err, dx_err, adapter_errs = grouped_against_fp32_reference(x, DenseBases(quantised), dense, as_, bs, scales, biases)
    assert out_err <= TOL and dx_err <= TOL and max(adapter_errs) <= TOL, (out_err, dx_err, adapter_errs)


def test_grouped_lora_over_fp8_bases_matches_fp32_references():
    """q/k/v as one node over one e4m3 matrix: against the separate fp32 projections of the same
    (dequantised) weights; the output and dx carry the e4m3 rounding of x and of dy, as a single fp8
    projection's do (tests/gpu/test_fp8.py bounds that at 4e-2), the adapter gradients do not."""
    if fp8_device_problem(torch.device("cuda")):
        pytest.skip(fp8_device_problem(torch.device("cuda")))
    x, ws, as_, bs, scales, biases = grouped_case(10, bias=True)
    w_fp8, scale = quantize_weight_rowwise(torch.cat(ws).bfloat16())
    dense = list(dequantize_weight(w_fp8, scale, torch.float32).split([w.shape[0] for w in ws]))
    bases = Fp8Bases(w_fp8, scale, [b.bfloat16() for b in biases])
    out_err, dx_err, adapter_errs = grouped_against_fp32_reference(x, bases, dense, as_, bs, scales, biases)
    assert out_err <= 4e-2 and dx_err <= 4e-2, (out_err, dx_err)
    assert max(adapter_errs) <= TOL, adapter_errs


def test_rope_bf16():
    torch.manual_seed(7)
    q = torch.randn(2, 2048, 32, 128, device="cuda").transpose(1, 2).requires_grad_(True)
    k = torch.randn(2, 2048, 8, 128, device="cuda").transpose(1, 2).requires_grad_(True)
    pos = torch.arange(2048, device="cuda", dtype=torch.float32)
    freqs = pos[:, None] / (500000.0 ** (torch.arange(0, 128, 2, device="cuda") / 128))[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)[None].expand(2, -1, -1)
    cos, sin = emb.cos(), emb.sin()

    def both(fn):
        return lambda q, k: torch.cat([t.flatten() for t in fn(q, k, cos.to(q.dtype), sin.to(q.dtype))])

    check(both(rope), both(reference_rope), [q, k])


# ---- the whole path -------------------------------------------------------------------------


def lora_model(folder, dtype):
    from honed.testing.lora import lora_model as build

    return build(folder, dtype=dtype, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("memory", ["none", "checkpoint", "offload", "offload-chunked", "offload-partial"])
def test_fused_path_matches_plain_path_on_gpu(tmp_path_factory, family, memory, monkeypatch):
    """fp32 on the GPU: fused = plain to rounding. bf16: the fused path strays from the fp32
    reference no further than the plain bf16 path does (a random tiny model's early-layer LoRA
    gradients are sums of many cancelling terms, so bf16 alone moves them a lot). "offload-chunked":
    the recomputed layers' MLP runs 96 tokens at a time (engine.replay), o_proj's outputs offloaded too.
    "offload-partial": the first layer keeps everything, the other two recompute from the host."""
    from honed.engine import PlainPath, replay
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.engine.memory import MemoryPlan
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    if memory == "offload-chunked":
        monkeypatch.setattr(replay, "mlp_chunk_tokens", lambda *a, **k: 96)
        memory = "offload"
    if memory == "offload-partial":  # what memory: auto plans when the host has room and some layers fit whole
        monkeypatch.setattr(FusedPath, "memory_plan", lambda self, model: MemoryPlan("offload", 2, 0.0))
        memory = "offload"

    folder = build_tiny_model(family, tmp_path_factory.mktemp(family), hidden_size=256, layers=3)
    cfg = path_config(folder, memory=memory)
    g = torch.Generator().manual_seed(7)
    probe = lora_model(folder, torch.float32)
    ids = torch.randint(5, probe.config.vocab_size, (2, 256), generator=g).cuda()
    labels = ids.clone()
    labels[:, :40] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.cat([torch.arange(100), torch.arange(156)]).expand(2, -1).cuda()}

    def run_path(dtype, fused):
        model = lora_model(folder, dtype)
        path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda"))) if fused else PlainPath()
        model = path.prepare(model)
        if fused:
            assert path.plan.mode == memory and path.plan.keep_o
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            s, n = path.loss_sum(model, batch)
        (s / n).backward()
        return float(s.detach() / n), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = run_path(torch.float32, fused=False)
    f32_loss, f32 = run_path(torch.float32, fused=True)
    p16_loss, p16 = run_path(torch.bfloat16, fused=False)
    f16_loss, f16 = run_path(torch.bfloat16, fused=True)
    assert abs(f32_loss - ref_loss) <= 1e-5 * ref_loss
    assert abs(f16_loss - ref_loss) <= 0.01 * ref_loss
    for k in ref:
        assert f16[k].dtype == torch.float32
        assert rel(f32[k], ref[k]) <= 1e-3, k
        assert rel(f16[k], ref[k]) <= 1.5 * rel(p16[k], ref[k]) + 1e-2, (k, rel(f16[k], ref[k]), rel(p16[k], ref[k]))


def test_honed_train_takes_the_fused_path_and_learns_like_the_plain_one(tmp_path, caplog):
    from honed.testing.lora import tiny_train_losses

    with caplog.at_level(logging.INFO, logger="honed.engine"):
        losses = tiny_train_losses(tmp_path, "qwen2", {"auto": {"engine": "auto"}, "plain": {"engine": "plain"}}, max_steps=60, learning_rate=3e-3)
    assert "training path: fused" in caplog.text
    record = json.loads((tmp_path / "auto" / "run_info.json").read_text())["model"]
    assert record["training_path"] == "fused" and record["memory_plan"]["mode"] == "none"  # a tiny model: everything fits
    fused, plain = losses["auto"], losses["plain"]
    print("fused", [round(x, 3) for x in fused])
    print("plain", [round(x, 3) for x in plain])
    assert fused[-1] < 0.8 * fused[0]
    # Two bf16 runs drift apart step by step from rounding alone; the curves must agree on average
    # within 2% and never by more than 5%.
    devs = [abs(a - b) / b for a, b in zip(fused, plain)]
    assert sum(devs) / len(devs) <= 0.02, devs
    assert max(devs) <= 0.05, devs


# ---- what a layer keeps (engine.derived) ---------------------------------------------------------


def kept_by_the_forward_and_grads(path, model, batch):
    """GPU bytes a step's forward leaves allocated (what it keeps for backward) and the step's LoRA
    gradients, from the second of two steps (the first compiles and allocates pinned buffers)."""
    model.train()
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s, n = path.loss_sum(model, batch)
        kept = torch.cuda.memory_allocated() - before
        (s / n).backward()
    torch.cuda.synchronize()
    return kept, {k: p.grad for k, p in model.named_parameters() if p.requires_grad}


def test_a_derived_norm_output_is_the_forward_output_bit_for_bit():
    """Backward derives the norm's output with `_rms_output` (compiled on CUDA); it must be the very
    tensor the forward's compiled kernel made, for bf16 and for fp32 (QLoRA) norm weights."""
    from honed.engine.layers import _rms_forward, _rms_output

    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    for weight in (torch.rand(256, device="cuda", dtype=torch.bfloat16), torch.rand(256, device="cuda")):
        y, rstd = _rms_forward(x, weight, 1e-6)
        assert torch.equal(_rms_output(x, weight, rstd), y)


@pytest.mark.parametrize("norm_weights", [torch.bfloat16, torch.float32])  # fp32: as peft leaves them for QLoRA
def test_derived_saves_keep_less_by_the_norm_and_swiglu_outputs_and_train_the_same(tmp_path_factory, monkeypatch, norm_weights):
    from honed.engine import derived
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    folder = build_tiny_model("llama3", tmp_path_factory.mktemp("derived"), hidden_size=256, layers=3)
    cfg = path_config(folder, memory="none")
    ids = torch.randint(5, 500, (2, 256), generator=torch.Generator().manual_seed(7)).cuda()
    batch = {"input_ids": ids, "labels": ids.clone()}

    def kept_bytes_and_grads(enabled):
        monkeypatch.setattr(derived, "ENABLED", enabled)
        torch.manual_seed(0)  # the same LoRA A matrices in both models
        model = lora_model(folder, torch.bfloat16)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.data = p.data.to(norm_weights)
        path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda")))
        return (*kept_by_the_forward_and_grads(path, path.prepare(model), batch), model.config)

    kept_all, grads_all, config = kept_bytes_and_grads(False)
    kept_derived, grads_derived, _ = kept_bytes_and_grads(True)
    expected = config.num_hidden_layers * ids.numel() * (2 * config.hidden_size + config.intermediate_size) * 2
    assert 0.9 * expected <= kept_all - kept_derived <= 1.1 * expected, (kept_all, kept_derived, expected)
    for k in grads_all:
        assert rel(grads_derived[k], grads_all[k]) <= 1e-3, k


def test_host_mlp_layers_keep_gate_up_off_the_gpu_and_train_bit_for_bit(tmp_path_factory, monkeypatch):
    """training.host_mlp_layers over the real offloader (pinned memory, a side stream): after the
    forward, every host layer's gate/up but the last two's (their copies may still run) is off the
    GPU, and the step's gradients are exactly those of the layers that kept theirs."""
    from honed.engine.fused import FusedPath
    from honed.engine.memory import MemoryPlan
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    folder = build_tiny_model("llama3", tmp_path_factory.mktemp("host-mlp"), hidden_size=256, layers=3)
    cfg = path_config(folder, memory="auto")
    ids = torch.randint(5, 500, (2, 256), generator=torch.Generator().manual_seed(7)).cuda()
    batch = {"input_ids": ids, "labels": ids.clone()}

    def kept_bytes_and_grads(host_mlp):
        monkeypatch.setattr(FusedPath, "memory_plan",
                            lambda self, model, extra_budget=0.0, host_mlp=host_mlp: MemoryPlan("none", 0, 0.0, host_mlp=host_mlp))
        torch.manual_seed(0)  # the same LoRA A matrices in both models
        model = lora_model(folder, torch.bfloat16)
        path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda")))
        return (*kept_by_the_forward_and_grads(path, path.prepare(model), batch), model.config)

    kept_all, grads_all, config = kept_bytes_and_grads(0)
    kept_host, grads_host, _ = kept_bytes_and_grads(3)
    one_layer = ids.numel() * 2 * config.intermediate_size * 2
    assert 0.9 * one_layer <= kept_all - kept_host <= 1.1 * one_layer, (kept_all, kept_host, one_layer)
    for k in grads_all:
        assert torch.equal(grads_host[k], grads_all[k]), k


def test_host_mlp_layers_auto_measures_the_link_and_the_forward_and_trains(tmp_path_factory):
    """host_mlp_layers: auto on a budget that recomputes layers: both probes give times, the choice
    is one of the planned counts, and a step runs with the plan it made."""
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model
    from honed.testing.lora import path_config

    from honed.engine.memory import backward_transient_bytes, layer_activation_bytes

    folder = build_tiny_model("llama3", tmp_path_factory.mktemp("host-auto"), hidden_size=256, layers=8)
    model = lora_model(folder, torch.bfloat16)
    tokens = 2 * 256  # path_config: batch 2 × 256 tokens
    half = tokens * (backward_transient_bytes(model.config) + 4 * layer_activation_bytes(model.config))  # room for half the 8 layers
    cfg = path_config(folder, memory="auto", memory_budget_gib=half / 2**30, host_mlp_layers="auto")
    path = FusedPath(resolve_engine_settings(cfg, torch.device("cuda")))
    model = path.prepare(model)
    decision = path.host_mlp_decision.describe()
    assert decision["copy_ms"] > 0 and decision["layer_forward_ms"] > 0
    assert path.plan.host_mlp == decision["layers"]
    ids = torch.randint(5, 500, (2, 256), generator=torch.Generator().manual_seed(7)).cuda()
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        s, n = path.loss_sum(model, {"input_ids": ids, "labels": ids.clone()})
    (s / n).backward()
    assert torch.isfinite(s)
