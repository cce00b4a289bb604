"""The decoder stack's graph wiring (engine.graphs) on CPU, against the same fused path without it.

On a CPU `RerunBackend` stands in for CUDA graphs: capturing runs the code once, replaying runs it
again. Everything around the graphs is what runs on a GPU: the first layer taking over the stack,
the later layers handing over, static input buffers, the `.grad` tensors the graphs own, signatures,
eager runs of new shapes, and a new memory plan dropping what was captured. The graphs themselves
are compared with the eager step on a GPU (tests/gpu/test_engine.py)."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

from honed.config import config_from_dict
from honed.engine.fused import FusedPath
from honed.engine.graphs import RerunBackend, StackGraphs, stack_signature
from honed.engine.settings import resolve_engine_settings
from honed.testing.lora import lora_model, train_path_steps


def cfg_for(memory="none", cuda_graphs=True):
    return config_from_dict({
        "model": {"name_or_path": "unused"},
        "data": {"train": ["unused.jsonl"], "max_seq_length": 32},
        "training": {"batch_size": 2, "memory": memory, "device": "cpu", "cuda_graphs": cuda_graphs},
    })


class RerunFusedPath(FusedPath):
    graph_backend = RerunBackend


def batches(model, length=24, packed=False, count=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, model.config.vocab_size, (2, length), generator=g)
        labels = ids.clone()
        labels[:, :6] = -100
        batch = {"input_ids": ids, "labels": labels}
        if packed:
            cut = length // 2
            batch["position_ids"] = torch.cat([torch.arange(cut), torch.arange(length - cut)]).expand(2, -1).clone()
        out.append(batch)
    return out


def train(path, model, steps_of_micro_batches):
    return train_path_steps(path, model, steps_of_micro_batches, lr=1e-2)


def paths_pair(tiny_model_dir, family, memory):
    base = lora_model(tiny_model_dir(family))
    eager_model, graph_model = base, copy.deepcopy(base)
    eager = FusedPath(resolve_engine_settings(cfg_for(memory, cuda_graphs=False), torch.device("cpu")))
    graphed = RerunFusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    return eager, eager.prepare(eager_model), graphed, graphed.prepare(graph_model)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
@pytest.mark.parametrize("memory", ["none", "checkpoint", "offload"])
def test_graphed_stack_trains_as_the_eager_stack(tiny_model_dir, family, memory):
    eager, eager_model, graphed, graph_model = paths_pair(tiny_model_dir, family, memory)
    assert eager.graphs is None and isinstance(graphed.graphs, StackGraphs)
    steps = [batches(eager_model, packed=family == "qwen2", seed=s) for s in range(4)]  # two micro-batches a step
    eager_losses, eager_weights = train(eager, eager_model, steps)
    graph_losses, graph_weights = train(graphed, graph_model, steps)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    assert_same(graph_weights, eager_weights)
    # Seen once (eager), captured the second time, replayed from then on: 8 micro-batches in all.
    assert graphed.graphs.summary() | {"capture_s": None} == {"captures": 1, "replays": 7, "eager_runs": 1, "capture_s": None, "disabled": None}
    # The first pass took no gradient steps from the graphs' own weights: the LoRA weights moved.
    assert not torch.equal(graph_weights[next(iter(graph_weights))], lora_model_weights(tiny_model_dir, family))


def lora_model_weights(tiny_model_dir, family):
    model = lora_model(tiny_model_dir(family))
    return next(p.detach() for p in model.parameters() if p.requires_grad)


def test_new_shapes_run_eagerly_and_captures_stop_at_the_limit(tiny_model_dir, caplog):
    eager, eager_model, graphed, graph_model = paths_pair(tiny_model_dir, "llama3", "checkpoint")
    graphed.graphs.max_captures = 1
    steps = [[b] for length in (24, 24, 16, 16, 24) for b in batches(eager_model, length=length, count=1, seed=length)]
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        graph_losses, graph_weights = train(graphed, graph_model, steps)
    eager_losses, eager_weights = train(eager, eager_model, steps)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    assert_same(graph_weights, eager_weights)
    # 24: eager, captured; 16: eager twice (no room for a second capture); 24 again: replayed.
    assert (graphed.graphs.captures, graphed.graphs.replays, graphed.graphs.eager_runs) == (1, 2, 3)
    assert "CUDA graphs: 1 stack shapes captured, later shapes run eagerly" in caplog.text


def test_evaluation_runs_eagerly(tiny_model_dir):
    _, _, graphed, model = paths_pair(tiny_model_dir, "llama3", "none")
    batch = batches(model, count=1)[0]
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            graphed.loss_sum(model, batch)
    assert graphed.graphs.summary()["replays"] == 0 and not graphed.graphs.seen


def test_a_new_memory_plan_forgets_the_graphs_and_captures_around_the_new_forwards(tiny_model_dir):
    eager, eager_model, graphed, graph_model = paths_pair(tiny_model_dir, "llama3", "none")
    steps = [batches(eager_model, count=1, seed=s) for s in range(5)]
    train(graphed, graph_model, steps[:2])
    assert graphed.graphs.captures == 1
    assert graphed.recover_from_oom()  # none → checkpoint, as after an out-of-memory error
    assert graphed.plan.mode == "checkpoint" and graphed.graphs.captures == 0 and not graphed.graphs.captured
    graph_losses, _ = train(graphed, graph_model, steps[2:])
    assert graphed.graphs.captures == 1
    train(eager, eager_model, steps[:2])
    assert eager.recover_from_oom()
    eager_losses, _ = train(eager, eager_model, steps[2:])
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)


def test_bind_gradients_keeps_accumulated_values_and_zeroes_cleared_ones():
    layer = torch.nn.Linear(3, 2)
    stack = StackGraphs([layer])
    stack.params, stack.grads = stack.trainable(), [torch.full_like(p, 7.0) for p in layer.parameters()]
    layer.weight.grad = torch.ones_like(layer.weight)  # accumulated by an eager micro-batch
    layer.bias.grad = None  # after the optimizer's zero_grad(set_to_none=True)
    stack.bind_gradients()
    assert layer.weight.grad is stack.grads[0] and torch.equal(layer.weight.grad, torch.ones_like(layer.weight))
    assert layer.bias.grad is stack.grads[1] and torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))


def test_signature_names_what_must_match_and_refuses_what_a_graph_cannot_hold():
    h = torch.zeros(1, 8, 4)
    cos = torch.zeros(1, 8, 2)
    base = stack_signature(h, {"position_embeddings": (cos, cos), "max_length_q": 8, "past_key_values": None})
    assert base == stack_signature(torch.ones(1, 8, 4), {"position_embeddings": (cos + 1, cos), "max_length_q": 8, "past_key_values": None})
    assert base != stack_signature(h, {"position_embeddings": (cos, cos), "max_length_q": 7, "past_key_values": None})
    assert base != stack_signature(torch.zeros(1, 9, 4), {"position_embeddings": (cos, cos), "max_length_q": 8, "past_key_values": None})
    with pytest.raises(TypeError, match="DynamicCache"):
        stack_signature(h, {"past_key_values": type("DynamicCache", (), {})()})
    with pytest.raises(TypeError, match="gradient"):
        stack_signature(h, {"extra": torch.zeros(2, requires_grad=True)})


def test_cuda_graphs_on_a_cpu_are_declined_and_said(tiny_model_dir, caplog):
    path = FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu")))
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        path.prepare(lora_model(tiny_model_dir("llama3")))
    assert path.graphs is None
    assert "fused path: CUDA graphs not used (not a CUDA device)" in caplog.text


def test_a_stale_accumulator_stops_the_capture_before_it_starts_and_other_warnings_pass():
    from honed.engine.graphs import NotCapturable, _refuse_stale_accumulators

    def caught(*messages):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            for m in messages:
                warnings.warn(m, UserWarning)
        return got

    with pytest.warns(UserWarning, match="unrelated"):
        _refuse_stale_accumulators(caught("unrelated"))
    with pytest.raises(NotCapturable, match="del loss"):
        _refuse_stale_accumulators(caught("The AccumulateGrad node's stream does not match the stream of the node that produced the incoming gradient."))
