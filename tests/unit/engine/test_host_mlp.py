"""training.host_mlp_layers: kept layers whose gate/up activations wait in host memory (engine.memory,
engine.derived.to_host). On the CPU the offloader's copies are stood in for by clones in a dict, so
the tests see what goes to the "host", when it comes back, and that the GPU-side tensor is let go."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from honed.engine import memory as memory_module
from honed.engine.fused import FusedPath
from honed.engine.memory import MemoryPlan, escalate, plan_memory
from honed.engine.settings import resolve_engine_settings
from honed.testing.lora import lora_model

from .test_engine_path import batch_for, cfg_for, loss_and_grads


class HostStandIn:
    """Replaces _Offloader's copies: `save` keeps a clone (the "host" copy) and gives that back."""

    def __init__(self, monkeypatch):
        self.saved, self.prefetched, self.loaded = [], [], []
        stand_in = self

        def save(offloader, key, tensor, lag=0):
            stand_in.saved.append(key)
            return tensor.detach().clone()

        def prefetch(offloader, index, device):
            stand_in.prefetched.append(index)

        def load(offloader, key, kept, device):
            stand_in.loaded.append(key)
            return kept

        monkeypatch.setattr(memory_module._Offloader, "save", save)
        monkeypatch.setattr(memory_module._Offloader, "prefetch", prefetch)
        monkeypatch.setattr(memory_module._Offloader, "load", load)


def fused_with_plan(tiny_model_dir, plan: MemoryPlan, family="llama3"):
    folder = tiny_model_dir(family)  # built before the seed: building draws from the global generator too
    torch.manual_seed(0)  # peft draws the LoRA A matrices from the global generator: the same models every call
    model = lora_model(folder)
    path = FusedPath(resolve_engine_settings(cfg_for("auto"), torch.device("cpu")))
    path.memory_plan = lambda model, extra_budget=0.0: plan
    return path, path.prepare(model)


def gate_up_outputs(monkeypatch, model) -> list:
    """Weak references to every gate/up output the forward makes (the joint node's, engine.grouped)."""
    from honed.engine.grouped import SiblingGroup

    refs, joint_output, width = [], SiblingGroup.joint_output, 2 * model.config.intermediate_size

    def spy(group, x, name=None):
        out = joint_output(group, x, name)
        if out is not None and out.shape[-1] == width:
            refs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(SiblingGroup, "joint_output", spy)
    return refs


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_host_mlp_layers_send_gate_up_away_bring_it_back_and_train_bit_for_bit(tiny_model_dir, family, monkeypatch):
    plain_path, plain_model = fused_with_plan(tiny_model_dir, MemoryPlan("none", 0, 0.0), family)
    path, model = fused_with_plan(tiny_model_dir, MemoryPlan("none", 0, 0.0, host_mlp=2), family)
    assert model.config.num_hidden_layers == 2
    batch = batch_for(model, packed=True)
    loss_ref, _, grads_ref = loss_and_grads(plain_path, plain_model, batch)

    host = HostStandIn(monkeypatch)
    outputs = gate_up_outputs(monkeypatch, model)
    model.train()
    loss_sum, n = path.loss_sum(model, batch)
    gc.collect()
    # after the forward the layers' own gate/up tensors are gone: only the "host" copies remain
    assert len(outputs) == 2 and all(ref() is None for ref in outputs)
    assert host.saved == [(0, "gate_up"), (1, "gate_up")]
    (loss_sum / n).backward()
    # layer 1's backward started (its output's gradient) before layer 0's gate/up was read
    assert host.prefetched == [0]
    assert sorted(host.loaded) == [(0, "gate_up"), (1, "gate_up")]
    assert float(loss_sum.detach() / n) == loss_ref
    for name, grad in grads_ref.items():
        assert torch.equal(dict(model.named_parameters())[name].grad, grad), name


def test_without_host_mlp_the_gate_up_tensors_stay_for_backward(tiny_model_dir, monkeypatch):
    path, model = fused_with_plan(tiny_model_dir, MemoryPlan("none", 0, 0.0))
    outputs = gate_up_outputs(monkeypatch, model)
    model.train()
    loss_sum, n = path.loss_sum(model, batch_for(model, packed=False))
    gc.collect()
    assert len(outputs) == 2 and all(ref() is not None for ref in outputs)


def test_only_kept_layers_send_theirs_and_a_recomputed_next_layer_still_prefetches(tiny_model_dir, monkeypatch):
    """host_mlp 2 of 2 layers with the last one recomputing: only layer 0 sends its gate/up."""
    path, model = fused_with_plan(tiny_model_dir, MemoryPlan("offload", 1, 0.0, host_mlp=2))
    host = HostStandIn(monkeypatch)
    batch = batch_for(model, packed=False)
    model.train()
    loss_sum, n = path.loss_sum(model, batch)
    (loss_sum / n).backward()
    assert (0, "gate_up") in host.saved and (1, "gate_up") not in host.saved
    assert 0 in host.prefetched


KW = dict(layers=32, tokens=4096, per_token_layer=120_000, hidden_bytes=8192, budget=8e9, rebuilt_bytes=300_000_000)


def test_the_plan_keeps_more_layers_whole_with_gate_up_on_the_host():
    without = plan_memory(**KW)
    # 32 layers keep 32 × 4,096 × 120,000 = 15.7 GB; 8 GB holds what 17 recomputing layers leave
    assert (without.mode, without.checkpointed, without.host_mlp) == ("offload", 17, 0)
    with_host = plan_memory(**KW, host_mlp_layers=12, host_mlp_per_token=60_000)
    # 12 layers free 4,096 × 60,000 bytes each, less two layers' in flight: 10 × 246 MB = 2.5 GB more budget
    assert (with_host.mode, with_host.checkpointed, with_host.host_mlp) == ("offload", 12, 12)
    assert with_host.estimate_gib <= 8e9 / 2**30


def test_host_mlp_is_at_most_the_kept_layers_and_what_half_the_host_holds():
    plan = plan_memory(**KW, host_mlp_layers=32, host_mlp_per_token=60_000)
    assert plan.host_mlp == 32 - plan.checkpointed
    small_host = plan_memory(**KW, host_mlp_layers=12, host_mlp_per_token=60_000, host_bytes=4e9)
    assert small_host.host_mlp == 8  # 2 GB of pinned memory holds 8 layers of 246 MB
    assert plan_memory(**KW, forced="checkpoint", host_mlp_layers=12, host_mlp_per_token=60_000).host_mlp == 0


def test_an_escalated_plan_keeps_host_mlp_only_on_layers_still_kept():
    assert escalate(MemoryPlan("checkpoint", 20, 1.0, host_mlp=12), 32).host_mlp == 4
    assert escalate(MemoryPlan("checkpoint", 4, 1.0, host_mlp=12), 32).host_mlp == 12


def test_auto_off_cuda_keeps_every_activation_on_the_device_and_says_why(tiny_model_dir, caplog):
    import logging

    model = lora_model(tiny_model_dir("llama3"))
    path = FusedPath(resolve_engine_settings(cfg_for("auto", host_mlp_layers="auto"), torch.device("cpu")))
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        path.prepare(model)
    assert path.plan.host_mlp == 0 and path.host_mlp_decision is None
    assert "host_mlp_layers auto → 0 (not a CUDA device)" in caplog.text


@pytest.mark.parametrize(("copy_ms", "host_layers_chosen"), [(0.1, True), (100.0, False)])
def test_auto_takes_host_layers_where_the_measured_copies_hide_behind_the_forward(tmp_path, monkeypatch, copy_ms, host_layers_chosen):
    """The measured branch with the two measurements stood in for: a fast link buys host layers (and
    fewer recomputed ones), a slow one none."""
    from honed.engine import host_mlp_choice
    from honed.testing import build_tiny_model

    model = lora_model(build_tiny_model("llama3", tmp_path / "eight", hidden_size=64, layers=8))
    # 64 tokens a micro-batch; ~0.7 MB holds the activations of some of the eight layers, not all
    path = FusedPath(resolve_engine_settings(cfg_for("auto", memory_budget_gib=6.5e-4), torch.device("cpu")))
    path.prepare(model)
    path.device = torch.device("cuda")  # as if on a GPU from here on: the two probes below are what it would measure
    monkeypatch.setattr(host_mlp_choice, "measure_copy_ms", lambda nbytes, device: copy_ms)
    monkeypatch.setattr(host_mlp_choice, "measure_layer_forward_ms", lambda *args: 1.0)
    monkeypatch.setattr(host_mlp_choice, "agreed_across_ranks", lambda layers, device: layers)
    monkeypatch.setattr(FusedPath, "host_bytes", lambda self: None)
    without = path.memory_plan(model, host_mlp=0)
    assert without.checkpointed > 0
    chosen = path.choose_host_mlp_layers(model)
    decision = path.host_mlp_decision.describe()
    assert decision["copy_ms"] == copy_ms and decision["layer_forward_ms"] == 1.0
    if host_layers_chosen:
        assert chosen > 0 and path.memory_plan(model, host_mlp=chosen).checkpointed < without.checkpointed
    else:
        assert chosen == 0


def test_host_mlp_layers_takes_a_count_or_auto_and_names_the_key_otherwise():
    from honed.errors import ConfigError

    assert cfg_for("auto", host_mlp_layers="auto").training.host_mlp_layers == "auto"
    assert cfg_for("auto", host_mlp_layers=4).training.host_mlp_layers == 4
    for bad in (-1, "many"):
        with pytest.raises(ConfigError, match="host_mlp_layers"):
            cfg_for("auto", host_mlp_layers=bad)


def test_a_lean_rebuild_reruns_the_projections_but_o_and_down():
    from types import SimpleNamespace

    from honed.engine.host_mlp_choice import rebuild_share

    llama_8b = SimpleNamespace(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    # q/k/v 25.2M and gate/up 117.4M multiply-adds a token of 218.1M with o (16.8M) and down (58.7M)
    assert round(rebuild_share(llama_8b), 3) == 0.654
