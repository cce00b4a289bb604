"""Each engine kernel against its plain-torch reference, outputs and gradients (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from honed.engine.layers import reference_rms_norm, reference_rope, reference_swiglu, rms_norm, rope, swiglu
from honed.engine.lora import lora_linear, reference_lora_linear
from honed.engine.loss import linear_cross_entropy_sum, reference_linear_cross_entropy_sum, shift_targets
from honed.engine.memory import MemoryPlan, escalate, plan_memory


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    loss = out[0] if isinstance(out, tuple) else out
    if loss.ndim:
        loss = (loss * torch.linspace(-1, 1, loss.numel()).view_as(loss)).sum()  # a non-uniform upstream gradient
    loss.backward()
    return loss.detach(), [x.grad for x in inputs]


def test_fused_lora_backward_does_not_cast_the_fp32_adapter_again():
    """bf16 activations, fp32 A and B (as under autocast): forward casts A and B to bf16 once and
    backward reuses those copies (it used to cast both again: two kernels a node, many nodes in a
    rebuilt layer); gradients come back in fp32, as the bf16 reference's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    x, w = torch.randn(6, 16).bfloat16().requires_grad_(True), torch.randn(8, 16).bfloat16()
    a, b = torch.randn(4, 16).requires_grad_(True), torch.randn(8, 4).requires_grad_(True)

    class AdapterCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket is torch.ops.aten._to_copy and args[0].dtype == torch.float32 and kwargs.get("dtype") == torch.bfloat16:
                self.seen.append(tuple(args[0].shape))
            return func(*args, **kwargs)

    y = lora_linear(x, w, a, b, 0.5)
    with AdapterCasts() as casts:
        y.float().sum().backward()
    assert tuple(a.shape) not in casts.seen and tuple(b.shape) not in casts.seen
    assert a.grad.dtype == b.grad.dtype == torch.float32
    ra, rb = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    reference_lora_linear(x.detach(), w, ra.bfloat16(), rb.bfloat16(), 0.5).float().sum().backward()
    assert rel(a.grad, ra.grad) < 1e-2 and rel(b.grad, rb.grad) < 1e-2


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_chunked_cross_entropy_matches_full_logits(chunk, weight_grad):
    torch.manual_seed(chunk)
    h, w = torch.randn(11, 16), torch.randn(37, 16) * 0.3
    t = torch.randint(0, 37, (11,))
    t[[0, 4, 5]] = -100
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_(weight_grad)
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_(weight_grad)
    a, n_a = linear_cross_entropy_sum(h1, w1, t, chunk_rows=chunk)
    b, n_b = reference_linear_cross_entropy_sum(h2, w2, t)
    (2.5 * a).backward()
    (2.5 * b).backward()
    assert n_a == n_b == 8
    assert rel(a, b) < 1e-6
    assert rel(h1.grad, h2.grad) < 1e-5
    assert h1.grad[[0, 4, 5]].abs().max() == 0  # ignored positions get no gradient
    if weight_grad:
        assert rel(w1.grad, w2.grad) < 1e-5


def test_chunked_cross_entropy_without_grad_gives_the_same_loss():
    h, w, t = torch.randn(9, 8), torch.randn(20, 8), torch.randint(0, 20, (9,))
    with torch.no_grad():
        a, _ = linear_cross_entropy_sum(h, w, t, chunk_rows=4)
    b, _ = reference_linear_cross_entropy_sum(h, w, t)
    assert rel(a, b) < 1e-6


def test_shift_targets():
    assert shift_targets(torch.tensor([[5, 6, 7]])).tolist() == [[6, 7, -100]]


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_linear_matches_reference(bias):
    torch.manual_seed(0)
    x, w, a, b = torch.randn(2, 5, 12), torch.randn(7, 12), torch.randn(4, 12), torch.randn(7, 4)
    bb = torch.randn(7) if bias else None

    def fused(x, a, b):
        return lora_linear(x, w, a, b, 0.75, bb)

    def ref(x, a, b):
        return reference_lora_linear(x, w, a, b, 0.75, bb)

    out_f, g_f = grads(fused, x, a, b)
    out_r, g_r = grads(ref, x, a, b)
    assert rel(out_f, out_r) < 1e-6
    for gf, gr in zip(g_f, g_r):
        assert rel(gf, gr) < 1e-5


def test_rms_norm_matches_transformers():
    x, w = torch.randn(3, 6, 16), torch.rand(16) + 0.5
    out_f, g_f = grads(lambda x, w: rms_norm(x, w, 1e-6), x, w)
    out_r, g_r = grads(lambda x, w: reference_rms_norm(x, w, 1e-6), x, w)
    assert rel(out_f, out_r) < 1e-6
    assert all(rel(a, b) < 1e-5 for a, b in zip(g_f, g_r))


def test_swiglu_matches_reference():
    g, u = torch.randn(4, 32) * 3, torch.randn(4, 32)
    out_f, g_f = grads(swiglu, g, u)
    out_r, g_r = grads(reference_swiglu, g, u)
    assert rel(out_f, out_r) < 1e-6
    assert all(rel(a, b) < 1e-5 for a, b in zip(g_f, g_r))


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_rope_matches_transformers_formula(unsqueeze_dim):
    torch.manual_seed(6)
    # q and k as the attention makes them: (B, L, H, D) projections viewed as (B, H, L, D)
    q = torch.randn(2, 5, 4, 8).transpose(1, 2) if unsqueeze_dim == 1 else torch.randn(2, 5, 4, 8)
    k = torch.randn(2, 5, 2, 8).transpose(1, 2) if unsqueeze_dim == 1 else torch.randn(2, 5, 2, 8)
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)

    def both(fn):
        return lambda q, k: torch.cat([t.flatten() for t in fn(q, k, cos, sin, unsqueeze_dim)])

    out_f, g_f = grads(both(rope), q, k)
    out_r, g_r = grads(both(reference_rope), q, k)
    assert rel(out_f, out_r) < 1e-6
    assert all(rel(a, b) < 1e-6 for a, b in zip(g_f, g_r))


def test_memory_plan_keeps_everything_when_it_fits_and_recomputes_only_what_does_not():
    kw = dict(layers=16, tokens=8192, per_token_layer=80_000, hidden_bytes=4096)
    assert plan_memory(**kw, budget=1e12).mode == "none"
    part = plan_memory(**kw, budget=6e9, host_bytes=1e8)  # no host room: the recomputed layers keep on the GPU
    assert part.mode == "checkpoint" and 0 < part.checkpointed < 16 and part.estimate_gib * 2**30 <= 6e9
    assert plan_memory(**kw, budget=1e8).mode == "offload"
    assert plan_memory(**kw, budget=1e12, forced="offload").checkpointed == 16
    assert plan_memory(**kw, budget=1e12, forced="checkpoint").checkpointed == 16


def test_with_host_room_recomputed_layers_offload_and_more_layers_stay_whole():
    """llama-8b at 4,096 tokens: a layer keeps ~0.7 GB, a recomputed one 67 MB (input and o_proj's output).
    Sending those 67 MB to the host frees room for whole layers: fewer layers recompute than when they
    stay on the GPU, within the same budget, and only while the host can take what they keep."""
    kw = dict(layers=32, tokens=4096, per_token_layer=170_000, hidden_bytes=8192, rebuilt_bytes=500_000_000)
    kept = 2 * 4096 * 8192
    for budget in (3e9, 6e9, 12e9, 20e9):
        on_gpu = plan_memory(**kw, budget=budget, host_bytes=0.0)
        offloaded = plan_memory(**kw, budget=budget, host_bytes=64e9)
        assert on_gpu.mode == "checkpoint" and offloaded.mode == "offload", budget
        assert offloaded.checkpointed <= on_gpu.checkpointed - (budget < 15e9), budget  # with many recomputed layers, fewer
        assert offloaded.estimate_gib * 2**30 <= budget and offloaded.keep_o
        # and none fewer: one layer less to recompute would not fit
        assert (32 - offloaded.checkpointed + 1) * 4096 * 170_000 + 2 * kept + 500_000_000 > budget
    just = plan_memory(**kw, budget=6e9, host_bytes=64e9).checkpointed * kept / 0.5
    assert plan_memory(**kw, budget=6e9, host_bytes=just).mode == "offload"
    assert plan_memory(**kw, budget=6e9, host_bytes=0.99 * just).mode == "checkpoint"
    # When every layer must recompute anyway, the choice is the one it always was.
    assert plan_memory(**kw, budget=1e9, host_bytes=64e9).checkpointed == 32


def test_memory_plan_leaves_room_for_the_backward_of_a_layer():
    kw = dict(layers=16, tokens=8192, per_token_layer=80_000, hidden_bytes=4096)
    full = 16 * 8192 * 80_000
    assert plan_memory(**kw, budget=full).mode == "none"
    assert plan_memory(**kw, budget=full, transient_per_token=1000).checkpointed > 0


def test_an_out_of_memory_plan_escalates_until_offload():
    plan, seen = MemoryPlan("none", 0, 0.0), []
    while plan is not None:
        seen.append((plan.mode, plan.checkpointed))
        plan = escalate(plan, 10)
    assert seen == [("none", 0), ("checkpoint", 3), ("checkpoint", 6), ("checkpoint", 9), ("checkpoint", 10), ("offload", 10)]
