"""Lean recompute (engine.replay) on tiny models, CPU, fp32: the rebuild of a recomputed layer skips
o_proj and down_proj, runs the MLP in chunks, and gives the plain path's loss and gradients."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from honed.engine import PlainPath, replay
from honed.engine.fused import FusedPath
from honed.engine.memory import MemoryPlan, apply_memory_plan, escalate
from honed.engine.settings import resolve_engine_settings
from honed.testing.lora import lora_model

from .test_engine_path import batch_for, cfg_for, loss_and_grads


def prepared(tiny_model_dir, family, memory):
    """(fused path, its model, an unpatched copy of the same model for the plain path)"""
    model = lora_model(tiny_model_dir(family))
    plain = copy.deepcopy(model)
    path = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    return path, path.prepare(model), plain


def step_flops(path, model, batch) -> int:
    model.zero_grad()
    with FlopCounterMode(display=False) as counter:
        loss_and_grads(path, model, batch)
    return counter.get_total_flops()


def assert_same_as_plain(plain, path, model, batch):
    l_ref, _, g_ref = loss_and_grads(PlainPath(), plain, batch)
    model.zero_grad()
    l_f, _, g_f = loss_and_grads(path, model, batch)
    assert abs(l_f - l_ref) < 1e-5 * abs(l_ref)
    for k in g_ref:
        err = float((g_f[k] - g_ref[k]).norm() / g_ref[k].norm().clamp_min(1e-12))
        assert err < 1e-4, (k, err)


def projection_flops(model, tokens: int, names: tuple[str, ...]) -> set[int]:
    """Matmul FLOPs of a forward of the named projections over every layer: the base matmul, with or
    without the LoRA B product (FlopCounterMode does not count the in-place addmm_ that adds it)."""
    base = lora = 0
    for layer in model.get_base_model().model.layers:
        for name in names:
            module = layer.self_attn.o_proj if name == "o_proj" else getattr(layer.mlp, name)
            out_features, in_features = module.base_layer.weight.shape
            base += 2 * tokens * in_features * out_features
            lora += 2 * tokens * module.lora_B["default"].weight.shape[1] * out_features
    return {base, base + lora}


@contextlib.contextmanager
def replay_switched_off():
    """What the recompute did before engine.replay: the whole layer again, o_proj and down_proj included."""
    saved = replay.capturing, replay.replaying
    replay.capturing = lambda layer: contextlib.nullcontext({"o": None})
    replay.replaying = lambda layer, o: contextlib.nullcontext()
    try:
        yield
    finally:
        replay.capturing, replay.replaying = saved


@pytest.mark.parametrize("memory", ["checkpoint", "offload"])
def test_the_rebuild_skips_exactly_the_o_and_down_projections(tiny_model_dir, memory):
    path, model, _ = prepared(tiny_model_dir, "llama3", memory)
    batch = batch_for(model, packed=True)
    lean = step_flops(path, model, batch)
    with replay_switched_off():
        full = step_flops(path, model, batch)
    assert path.plan.keep_o
    tokens = batch["input_ids"].numel()
    assert full - lean in projection_flops(model, tokens, ("o_proj", "down_proj"))


def test_without_recompute_nothing_is_skipped(tiny_model_dir):
    path, model, _ = prepared(tiny_model_dir, "llama3", "none")
    batch = batch_for(model, packed=False)
    lean = step_flops(path, model, batch)
    with replay_switched_off():
        assert step_flops(path, model, batch) == lean


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
def test_a_chunked_mlp_gives_the_same_loss_and_gradients(tiny_model_dir, family, monkeypatch):
    """Chunks of 10 tokens over rows of 24: uneven chunks that cross rows, in the rebuild's backward
    and in the first forward without grad."""
    monkeypatch.setattr(replay, "mlp_chunk_tokens", lambda *a, **k: 10)
    path, model, plain = prepared(tiny_model_dir, family, "checkpoint")
    chunks = []
    original = replay.chunked_without_grad
    monkeypatch.setattr(replay, "chunked_without_grad", lambda x, run, chunk: chunks.append(chunk) or original(x, run, chunk))
    assert_same_as_plain(plain, path, model, batch_for(model, packed=True))
    assert chunks and set(chunks) == {10}


def test_a_plan_with_whole_mlp_rebuilds_the_mlp_in_one_piece_and_still_matches(tiny_model_dir, monkeypatch):
    """The plan's `whole_mlp` overrides the chunk size for the deferred MLP of every rebuilt layer."""
    monkeypatch.setattr(replay, "mlp_chunk_tokens", lambda *a, **k: 10)
    path, model, plain = prepared(tiny_model_dir, "llama3", "checkpoint")
    path.plan = MemoryPlan("checkpoint", path.plan.checkpointed, 0.0, whole_mlp=True)
    apply_memory_plan(path.decoder_layers, path.plan)
    chunks = []
    original = replay.deferred_mlp
    monkeypatch.setattr(replay, "deferred_mlp", lambda mlp, x, run, chunk: chunks.append(chunk) or original(mlp, x, run, chunk))
    batch = batch_for(model, packed=True)
    assert_same_as_plain(plain, path, model, batch)
    assert chunks and set(chunks) == {batch["input_ids"].numel()}
    apply_memory_plan(path.decoder_layers, MemoryPlan("checkpoint", path.plan.checkpointed, 0.0))  # and back to chunks
    chunks.clear()
    model.zero_grad()
    loss_and_grads(path, model, batch)
    assert set(chunks) == {10}


def test_auto_rebuilds_the_mlp_whole_only_where_the_budget_has_room_and_never_when_forced():
    from honed.engine.memory import plan_memory

    chunked, whole = 300_000_000, 450_000_000
    kw = dict(layers=32, tokens=4096, per_token_layer=170_000, hidden_bytes=8192, rebuilt_bytes=chunked,
              whole_mlp_rebuilt_bytes=whole, host_bytes=64e9)
    roomy = plan_memory(**kw, budget=9e9)
    assert roomy.checkpointed and roomy.whole_mlp
    assert roomy.estimate_gib * 2**30 <= 9e9
    without = plan_memory(**{**kw, "whole_mlp_rebuilt_bytes": None}, budget=9e9)
    assert (roomy.mode, roomy.checkpointed) == (without.mode, without.checkpointed)  # the layers are planned first
    assert abs((roomy.estimate_gib - without.estimate_gib) * 2**30 - (whole - chunked)) < 1e3
    # just short of room for the difference: chunks
    tight = without.estimate_gib * 2**30 + (whole - chunked) - 1
    assert not plan_memory(**kw, budget=tight).whole_mlp
    assert plan_memory(**kw, budget=tight + 2).whole_mlp
    assert not plan_memory(**kw, budget=1e12).whole_mlp  # nothing recomputes: no rebuild to speak of
    assert not plan_memory(**kw, budget=1e12, forced="offload").whole_mlp  # asked for the leanest: chunks
    assert not escalate(roomy, 32).whole_mlp  # out of memory: back to chunks as well


def test_without_o_kept_the_rebuild_computes_o_proj_and_still_matches(tiny_model_dir):
    path, model, plain = prepared(tiny_model_dir, "qwen2", "offload")
    path.plan = MemoryPlan("offload", path.plan.checkpointed, 0.0, keep_o=False)  # as when host memory is short
    apply_memory_plan(path.decoder_layers, path.plan)
    batch = batch_for(model, packed=True)
    assert_same_as_plain(plain, path, model, batch)
    without_o = step_flops(path, model, batch)
    with replay_switched_off():
        full = step_flops(path, model, batch)
    assert full - without_o in projection_flops(model, batch["input_ids"].numel(), ("down_proj",))


def test_an_offload_plan_keeps_o_only_when_the_host_has_room():
    from honed.engine.memory import plan_memory

    kw = dict(layers=32, tokens=262_144, per_token_layer=170_000, hidden_bytes=8192, budget=60e9, forced="offload")
    both = 2 * 32 * 262_144 * 8192  # inputs and o_proj outputs of every layer: 128 GiB
    assert plan_memory(**kw, host_bytes=2 * both).keep_o
    assert not plan_memory(**kw, host_bytes=1.9 * both).keep_o  # what ran out on a 128 GiB host at 196,608 tokens
    assert plan_memory(**kw, host_bytes=None).keep_o


def test_the_replay_slots_are_empty_outside_a_recomputed_layer(tiny_model_dir):
    path, model, _ = prepared(tiny_model_dir, "llama3", "checkpoint")
    loss_and_grads(path, model, batch_for(model, packed=False))
    layer = model.get_base_model().model.layers[0]
    assert replay.output_for(layer.self_attn.o_proj) is None and replay.output_for(layer.mlp.down_proj) is None
    assert not replay.defers(layer.mlp)


@pytest.mark.parametrize("fraction, usable", [(1.0, 60), (0.25, 25 - 5), (0.5, 50 - 5)])
def test_a_capped_process_plans_within_its_cap(monkeypatch, fraction, usable):
    """GiB: a 100 GiB card with 60 free; the process holds 5 and may use `fraction` of the card."""
    from honed.engine.memory import usable_gpu_bytes

    gib = 2**30

    def needs_an_index(index):  # as torch's getter: a bare torch.device("cuda") is refused
        assert isinstance(index, int)
        return index

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (needs_an_index(index) * 0 + 60 * gib, 100 * gib))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda index: needs_an_index(index) * 0 + fraction)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: needs_an_index(index) * 0 + 5 * gib)
    assert usable_gpu_bytes(torch.device("cuda")) == usable * gib
    assert usable_gpu_bytes(torch.device("cuda", 0)) == usable * gib
