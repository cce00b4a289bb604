"""engine.derived: the fused path keeps neither the norms' nor SwiGLU's outputs for backward, and
backward, deriving them again, computes exactly what it computed when it kept them (CPU, fp32)."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from honed.engine import derived
from honed.engine.fused import FusedPath
from honed.engine.layers import rms_norm
from honed.engine.lora import lora_linear
from honed.engine.memory import layer_activation_bytes
from honed.engine.settings import resolve_engine_settings
from honed.testing.lora import lora_model

from .test_engine_path import batch_for, cfg_for, loss_and_grads


class SavedTensors:
    """What the saved-tensor hook stores during a forward: wraps `derived._pack` to see it."""

    def __init__(self, monkeypatch, offers: bool):
        self.stored = []
        pack = derived._pack

        def spy(t):
            out = pack(t)
            self.stored.append(out)
            return out

        monkeypatch.setattr(derived, "_pack", spy)
        if not offers:  # the hook runs, but nothing is offered: every saved tensor is kept
            monkeypatch.setattr(derived, "offer", lambda output, derive: None)

    def kept_bytes(self, model) -> int:
        """Bytes of the distinct memory the stored tensors hold, the model's own weights left out."""
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages = {}
        for t in self.stored:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())

    def derived_count(self) -> int:
        return sum(isinstance(t, derived._Derived) for t in self.stored)


def fused(tiny_model_dir, family, memory="none"):
    folder = tiny_model_dir(family)  # built before the seed: building draws from the global generator too
    torch.manual_seed(0)  # peft draws the LoRA A matrices from the global generator: the same models every call
    model = lora_model(folder)
    path = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    return path, path.prepare(model)


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_a_layer_keeps_neither_norm_nor_swiglu_outputs_and_backward_is_bit_identical(tiny_model_dir, family, monkeypatch):
    path, model = fused(tiny_model_dir, family)
    kept_model = copy.deepcopy(model)
    batch = batch_for(model, packed=False)
    tokens = batch["input_ids"].numel()

    with monkeypatch.context() as m:
        keeping = SavedTensors(m, offers=False)
        loss_kept, _, grads_kept = loss_and_grads(path, kept_model, batch)
    deriving = SavedTensors(monkeypatch, offers=True)
    loss_derived, _, grads_derived = loss_and_grads(path, model, batch)

    config = model.config
    layers, d, f = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    # per layer: the two norms' outputs (d each) and SwiGLU's (f), fp32 on the CPU
    assert keeping.kept_bytes(kept_model) - deriving.kept_bytes(model) == layers * tokens * (2 * d + f) * 4
    assert deriving.derived_count() == layers * 3  # q/k/v and gate/up each one node, down_proj one
    assert keeping.derived_count() == 0
    assert loss_derived == loss_kept
    assert grads_derived.keys() == grads_kept.keys()
    for name in grads_kept:
        assert torch.equal(grads_derived[name], grads_kept[name]), name


def test_a_recomputed_layers_rebuild_derives_them_too_and_matches(tiny_model_dir, monkeypatch):
    path, model = fused(tiny_model_dir, "llama3", memory="checkpoint")
    _, kept_model = fused(tiny_model_dir, "llama3", memory="checkpoint")  # not a deep copy: each layer's recompute wraps its own forward
    batch = batch_for(model, packed=True)
    monkeypatch.setattr(derived, "ENABLED", False)
    loss_kept, _, grads_kept = loss_and_grads(path, kept_model, batch)
    monkeypatch.setattr(derived, "ENABLED", True)
    stored = SavedTensors(monkeypatch, offers=True)
    loss_derived, _, grads_derived = loss_and_grads(path, model, batch)
    # every layer recomputes: its first forward saves nothing, its rebuild in backward derives the
    # attention norm's output (q/k/v) and the MLP norm's (the deferred MLP keeps it: engine.replay)
    assert stored.derived_count() == 2 * model.config.num_hidden_layers
    assert loss_derived == loss_kept
    for name in grads_kept:
        assert torch.equal(grads_derived[name], grads_kept[name]), name


def test_a_cast_of_an_fp32_norm_output_is_derived_as_the_cast(monkeypatch):
    """QLoRA keeps norm weights in fp32: the norm's output is fp32 and the LoRA node saves its bf16 copy."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.rand(8)  # fp32
    a, b = torch.randn(2, 8, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.bfloat16)
    stored = SavedTensors(monkeypatch, offers=True)
    with derived.derived_saves(enabled=True):
        normed = rms_norm(x, weight, 1e-6)
        assert normed.dtype == torch.float32
        y = lora_linear(derived.cast(normed, torch.bfloat16), w, a, b, 0.5)
        expected_input = normed.detach().to(torch.bfloat16)
    [node_input] = [t for t in stored.stored if isinstance(t, derived._Derived)]
    assert torch.equal(derived._unpack(node_input), expected_input.view(-1, 8))
    y.float().sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_nothing_is_offered_without_grad_or_outside_the_context():
    x, weight = torch.randn(4, 8), torch.rand(8)
    assert not derived.wanted()
    with derived.derived_saves(enabled=True):
        with torch.no_grad():  # a recomputed layer's first forward
            assert not derived.wanted()
            rms_norm(x, weight, 1e-6)
        assert derived._state.offers == {}
        assert derived.wanted()
    assert derived._state.offers is None


def test_memory_freed_since_its_offer_is_never_taken_for_the_output():
    with derived.derived_saves(enabled=True):
        y = torch.randn(4, 8)
        derived.offer(y, lambda: torch.zeros(4, 8))
        [address] = derived._state.offers
        del y
        gc.collect()
        other = torch.randn(4, 8)
        derived._state.offers[other.untyped_storage().data_ptr()] = derived._state.offers.pop(address)  # as if reallocated there
        assert derived._pack(other) is other


def test_the_plan_counts_what_derived_saves_leave_out():
    from types import SimpleNamespace

    llama_8b = SimpleNamespace(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    # kept: 155,648 bytes a token counted (× 1.1 calibration); derived: less 2 × (2 × 4,096 + 14,336)
    assert layer_activation_bytes(llama_8b, derived_saves=False) == int(155_648 * 1.1)
    assert layer_activation_bytes(llama_8b, derived_saves=True) == int(110_592 * 1.1)


def test_the_fused_paths_norms_stay_patched_through_train_and_eval(tiny_model_dir):
    """A model loaded with transformers' Hub kernels on (its default where `kernels` is installed)
    kernelizes again at each train()/eval() switch, which drops the forwards honed gives its norms."""
    path, model = fused(tiny_model_dir, "llama3")
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    model.train()
    model.eval()
    model.train()
    assert norms and all("forward" in vars(m) for m in norms)


def test_a_backward_inside_the_forwards_context_leaves_the_forwards_offers_as_they_were(tiny_model_dir):
    """A CUDA graph capture runs the stack's backward inside the step's forward: the rebuilds of
    recomputed layers (and their deferred MLPs) must not add their tensors to the forward's offers,
    which live until the forward ends."""
    path, model = fused(tiny_model_dir, "llama3", memory="checkpoint")
    batch = batch_for(model, packed=False)
    model.train()
    with derived.derived_saves():
        loss_sum, n = path.loss_sum(model, batch)  # nested: the path's own derived_saves shares this hook
        offers = derived._state.offers
        before = dict(offers)
        (loss_sum / n).backward()
        assert derived._state.offers is offers and offers == before


def test_qwen3s_per_head_norms_keep_the_joint_qkv_output_and_the_plan_counts_it(tiny_model_dir, monkeypatch):
    """Qwen3's q_norm and k_norm keep their inputs, views of the joint q/k/v output: that whole output
    stays for backward, on top of what a Llama layer of the same shape keeps."""
    kept = {}
    for family in ("llama3", "qwen3"):
        path, model = fused(tiny_model_dir, family)
        with monkeypatch.context() as m:
            stored = SavedTensors(m, offers=True)
            model.train()
            path.loss_sum(model, batch_for(model, packed=False))
        kept[family] = stored.kept_bytes(model), model.config
    llama, qwen3 = kept["llama3"][1], kept["qwen3"][1]
    assert (llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads) == (qwen3.hidden_size, qwen3.num_attention_heads,
                                                                                       qwen3.num_key_value_heads)
    head_dim = qwen3.head_dim
    q, kv, tokens = qwen3.num_attention_heads * head_dim, qwen3.num_key_value_heads * head_dim, 48
    # the joint output (q + 2·kv values a token) and the two norms' fp32 scales (one a head), fp32 on the CPU
    per_token_layer = (q + 2 * kv) * 4 + (qwen3.num_attention_heads + qwen3.num_key_value_heads) * 4
    assert kept["qwen3"][0] - kept["llama3"][0] == qwen3.num_hidden_layers * tokens * per_token_layer
    assert abs(layer_activation_bytes(qwen3, dtype_bytes=4) - layer_activation_bytes(llama, dtype_bytes=4) - 1.1 * (q + 2 * kv) * 4) <= 1
