"""Sibling projections as one node (engine.grouped), CPU, fp32: the node's outputs and gradients
against the separate plain-torch projections, its use inside the fused path (every q/k/v and gate/up
of the tiny models runs grouped, with the same loss and gradients as each projection on its own), the
cases where it must step aside, and the fp8 bases stored as one matrix."""

from __future__ import annotations

import copy

import pytest
import torch

from honed.engine import grouped
from honed.engine.fp8 import (
    SCALE_NAME,
    convert_lora_bases_to_fp8,
    dequantize_weight,
    quantize_weight_rowwise,
)
from honed.engine.fused import FusedPath
from honed.engine.grouped import (
    DenseBases,
    Fp8Bases,
    group_siblings,
    grouped_lora_linear,
)
from honed.engine.layers import packed_swiglu, reference_swiglu
from honed.engine.lora import (
    GROUP_ATTR,
    lora_linear,
    patch_lora_layers,
    reference_lora_linear,
)
from honed.engine.settings import resolve_engine_settings
from honed.testing.lora import lora_model

from .test_engine_path import batch_for, cfg_for, loss_and_grads


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def projections(seed=0, outs=(12, 4, 4), ranks=(4, 4, 2), width=16, bias=False):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, width, generator=g) for o in outs]
    as_ = [torch.randn(r, width, generator=g) for r in ranks]
    bs = [torch.randn(o, r, generator=g) for o, r in zip(outs, ranks)]
    biases = [torch.randn(o, generator=g) if bias else None for o in outs]
    return ws, as_, bs, biases


def leaves(tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("scales", [(0.5, 2.0, 1.0), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0)])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_node_matches_each_projection_on_its_own(scales, bias):
    ws, as_, bs, biases = projections(bias=bias)
    x = torch.randn(2, 5, 16)
    up = torch.randn(2, 5, 20)
    gx, ga, gb = x.clone().requires_grad_(True), leaves(as_), leaves(bs)
    got = grouped_lora_linear(gx, DenseBases(ws, biases), ga, gb, scales)
    (got * up).sum().backward()
    rx, ra, rb = x.clone().requires_grad_(True), leaves(as_), leaves(bs)
    ref = torch.cat([reference_lora_linear(rx, w, a, b, s, bias_) for w, a, b, s, bias_ in zip(ws, ra, rb, scales, biases)], -1)
    (ref * up).sum().backward()
    assert rel(got, ref) < 1e-6
    assert rel(gx.grad, rx.grad) < 1e-6
    for g, r in zip(ga + gb, ra + rb):
        assert rel(g.grad, r.grad) < 1e-6


def test_grouped_node_over_one_fp8_matrix_matches_the_fp8_projections_on_their_own():
    ws, as_, bs, _ = projections(seed=1, outs=(32, 16, 16), ranks=(4, 4, 4))
    w_fp8, scale = quantize_weight_rowwise(torch.cat(ws))
    parts = list(zip(w_fp8.split([32, 16, 16]), scale.split([32, 16, 16])))
    x, up = torch.randn(6, 16), torch.randn(6, 64)
    gx, ga, gb = x.clone().requires_grad_(True), leaves(as_), leaves(bs)
    got = grouped_lora_linear(gx, Fp8Bases(w_fp8, scale), ga, gb, (2.0, 2.0, 2.0))
    (got * up).sum().backward()
    rx, ra, rb = x.clone().requires_grad_(True), leaves(as_), leaves(bs)
    ref = torch.cat([lora_linear(rx, w, a, b, 2.0, fp8_scale=s) for (w, s), a, b in zip(parts, ra, rb)], -1)
    (ref * up).sum().backward()
    # The same e4m3 rounding of x (per row, once for all three) and of dy·scale (per row of the joint dy:
    # one scale across the three, so dx may differ from the separate nodes by e4m3 steps, not more).
    assert rel(got, ref) < 1e-6
    assert rel(gx.grad, rx.grad) < 0.07
    for g, r in zip(ga + gb, ra + rb):
        assert rel(g.grad, r.grad) < 1e-6


def test_packed_swiglu_matches_the_reference_and_gives_one_gradient_tensor():
    t = torch.randn(7, 2 * 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(packed_swiglu, (t,))
    y = packed_swiglu(t)
    assert torch.allclose(y, reference_swiglu(t[:, :6], t[:, 6:]))


def count_grouped_calls(monkeypatch):
    calls = {"forward": 0}
    original = grouped._GroupedLoraLinear.forward

    def counting(ctx, *args):
        calls["forward"] += 1
        return original(ctx, *args)

    monkeypatch.setattr(grouped._GroupedLoraLinear, "forward", staticmethod(counting))
    return calls


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
@pytest.mark.parametrize("memory", ["none", "offload"])
def test_fused_path_runs_qkv_and_gate_up_as_one_node_with_the_same_gradients(tiny_model_dir, family, memory, monkeypatch):
    model = lora_model(tiny_model_dir(family))
    separate = copy.deepcopy(model)
    path = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    path.prepare(model)
    layers = model.config.num_hidden_layers
    assert sum(getattr(m, GROUP_ATTR, None) is not None for m in model.modules()) == 5 * layers
    calls = count_grouped_calls(monkeypatch)
    batch = batch_for(model, packed=True)
    loss, _, grads = loss_and_grads(path, model, batch)
    # two groups a layer, and again in the rebuild of every recomputed layer
    assert calls["forward"] == 2 * layers * (2 if memory == "offload" else 1)

    monkeypatch.setattr(grouped, "ENABLED", False)
    calls["forward"] = 0
    separate_path = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    separate_path.prepare(separate)
    ref_loss, _, ref_grads = loss_and_grads(separate_path, separate, batch)
    assert calls["forward"] == 0
    assert abs(loss - ref_loss) < 1e-6 * abs(ref_loss)
    for k in ref_grads:
        assert rel(grads[k], ref_grads[k]) < 1e-5, k


def test_a_group_steps_aside_when_its_members_cannot_run_together(tiny_model_dir, monkeypatch):
    model = lora_model(tiny_model_dir("llama3"))
    FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu"))).prepare(model)
    attn = model.base_model.model.model.layers[0].self_attn
    calls = count_grouped_calls(monkeypatch)
    x = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        expected = [reference_lora_linear(x, m.base_layer.weight, m.lora_A["default"].weight, m.lora_B["default"].weight,
                                          m.scaling["default"]) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        # the first call computes all three; the others take theirs only for the same input
        assert torch.allclose(attn.q_proj(x), expected[0], atol=1e-5)
        assert torch.allclose(attn.k_proj(x), expected[1], atol=1e-5)
        other = x.clone()
        assert torch.allclose(attn.v_proj(other), expected[2], atol=1e-5)  # another tensor: computed on its own
        assert calls["forward"] == 1
        # one member's adapter switched off: no joint node, each member answers for itself
        attn.k_proj.enable_adapters(False)  # peft: this layer alone runs without its adapter
        assert torch.allclose(attn.q_proj(x), expected[0], atol=1e-5)
        assert torch.allclose(attn.k_proj(x), x @ attn.k_proj.base_layer.weight.t(), atol=1e-5)
        assert calls["forward"] == 1


def test_fp8_bases_of_a_group_are_stored_as_one_matrix_and_compute_the_same(tiny_model_dir):
    model = lora_model(tiny_model_dir("llama3"))
    patch_lora_layers(model)
    convert_lora_bases_to_fp8(model)
    mlp = model.base_model.model.model.layers[0].mlp
    x = torch.randn(2, 3, model.config.hidden_size)
    with torch.no_grad():
        before = [mlp.gate_proj(x), mlp.up_proj(x)]
        separate = [dequantize_weight(m.base_layer.weight, getattr(m.base_layer, SCALE_NAME), torch.float32) for m in (mlp.gate_proj, mlp.up_proj)]
    assert group_siblings(model) == 2 * model.config.num_hidden_layers
    group = getattr(mlp.gate_proj, GROUP_ATTR)
    weight, scale = group.fp8
    gate, up = mlp.gate_proj.base_layer, mlp.up_proj.base_layer
    assert gate.weight.untyped_storage().data_ptr() == up.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert getattr(up, SCALE_NAME).untyped_storage().data_ptr() == scale.untyped_storage().data_ptr()
    assert not gate.weight.requires_grad
    for layer, dense in zip((gate, up), separate):
        assert torch.equal(dequantize_weight(layer.weight, getattr(layer, SCALE_NAME), torch.float32), dense)
    with torch.no_grad():
        joint = group.joint_output(x)
    assert torch.allclose(joint, torch.cat(before, -1), atol=1e-6)
    # a base re-stored after grouping (cast, edited) no longer matches the joint matrix: each runs alone
    gate.weight = torch.nn.Parameter(gate.weight.clone(), requires_grad=False)
    assert group.joint_output(x) is None
