"""training.embeddings_on_host (engine.host_embedding) on a CPU: when the fused path moves the input
embeddings, what it refuses and why, and that a moved table trains as before.

On a CPU the table is in host memory anyway and its rows are read with F.embedding; the GPU kernel
that reads pinned host memory is compared with F.embedding in tests/gpu/test_engine.py.
`FusedPath.host_embeddings_off_cuda` lets the path act on a CPU so that its wiring is checked here."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from honed.config import config_from_dict
from honed.data.dataset import check_token_ids
from honed.data.tokenize import TokenizedSample
from honed.engine import host_embedding
from honed.engine.fused import FusedPath, causal_lm_of
from honed.engine.settings import resolve_engine_settings
from honed.errors import DataError
from honed.testing.lora import lora_model, train_path_steps


class AnywherePath(FusedPath):
    host_embeddings_off_cuda = True


def cfg_for(memory="offload", embeddings_on_host=None):
    return config_from_dict({
        "model": {"name_or_path": "unused"},
        "data": {"train": ["unused.jsonl"], "max_seq_length": 32},
        "training": {"batch_size": 2, "memory": memory, "device": "cpu", "embeddings_on_host": embeddings_on_host},
    })


def batches(model, count=3):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(count):
        ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
        labels = ids.clone()
        labels[:, :6] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def embeddings_of(model):
    return causal_lm_of(model).get_input_embeddings()


@pytest.mark.parametrize(("memory", "wanted", "moves"), [
    ("offload", None, True),  # layers recompute: memory is short, the table goes
    ("checkpoint", None, True),
    ("none", None, False),  # nothing recomputes: it stays
    ("none", True, True),  # asked for
    ("offload", False, False),  # refused
])
def test_the_table_moves_when_layers_recompute_or_when_asked(tiny_model_dir, memory, wanted, moves):
    model = lora_model(tiny_model_dir("llama3"))
    path = AnywherePath(resolve_engine_settings(cfg_for(memory, wanted), torch.device("cpu")))
    path.prepare(model)
    assert path.embeddings_on_host is moves
    assert host_embedding.on_host(embeddings_of(model)) is moves


def test_a_moved_table_trains_as_the_table_in_place(tiny_model_dir, monkeypatch):
    """Same losses and LoRA weights over three AdamW steps, with every forward reading the table
    through engine.host_embedding.gather_rows."""
    base = lora_model(tiny_model_dir("llama3"))
    kept_model, moved_model = base, copy.deepcopy(base)
    kept = FusedPath(resolve_engine_settings(cfg_for("offload", embeddings_on_host=False), torch.device("cpu")))
    moved = AnywherePath(resolve_engine_settings(cfg_for("offload"), torch.device("cpu")))
    kept.prepare(kept_model)
    moved.prepare(moved_model)
    weight = embeddings_of(moved_model).weight
    reads = []
    real_gather = host_embedding.gather_rows
    monkeypatch.setattr(host_embedding, "gather_rows", lambda table, ids: reads.append(ids.shape) or real_gather(table, ids))
    steps = [[b] for b in batches(base)]
    ref_losses, ref_weights = train_path_steps(kept, kept_model, steps, lr=1e-2)
    losses, weights = train_path_steps(moved, moved_model, steps, lr=1e-2)
    assert reads == [(2, 24)] * 3
    assert embeddings_of(moved_model).weight is weight  # the same Parameter: state_dict and saving see it as before
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    for k in ref_weights:
        assert torch.allclose(weights[k], ref_weights[k], rtol=1e-6, atol=1e-8), k


def test_move_keeps_the_parameter_its_values_and_hooks_and_restore_undoes_it():
    embedding = torch.nn.Embedding(12, 4)
    embedding.weight.requires_grad_(False)
    values = embedding.weight.detach().clone()
    seen = []
    embedding.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    weight = embedding.weight
    host_embedding.move_to_host(embedding)
    ids = torch.tensor([[0, 11, 3]])
    assert host_embedding.on_host(embedding) and embedding.weight is weight
    assert torch.equal(embedding(ids), values[ids]) and seen == [(1, 3, 4)]
    assert list(embedding.state_dict()) == ["weight"]
    host_embedding.restore_embedding(embedding, torch.device("cpu"))
    assert not host_embedding.on_host(embedding) and "forward" not in vars(embedding)
    assert torch.equal(embedding(ids), values[ids])


def test_what_cannot_move_is_named(tiny_model_dir):
    tied = lora_model(tiny_model_dir("qwen2"))  # tiny qwen2 ties lm_head to the embeddings, as Qwen2.5-0.5B does
    assert "tied to lm_head" in host_embedding.blocker(causal_lm_of(tied))
    model = lora_model(tiny_model_dir("llama3"))
    lm = causal_lm_of(model)
    assert host_embedding.blocker(lm) is None
    lm.get_input_embeddings().weight.requires_grad_(True)
    assert host_embedding.blocker(lm) == "the input embeddings train"
    lm.get_input_embeddings().weight.requires_grad_(False)
    lm.get_input_embeddings().max_norm = 1.0
    assert "max_norm" in host_embedding.blocker(lm)
    assert host_embedding.unavailable_reason(torch.device("cpu")) == "not a CUDA device"


@pytest.mark.parametrize(("wanted", "level"), [(True, logging.WARNING), (None, logging.INFO)])
def test_a_table_that_stays_says_why(tiny_model_dir, caplog, wanted, level):
    model = lora_model(tiny_model_dir("qwen2"))
    path = AnywherePath(resolve_engine_settings(cfg_for("offload", wanted), torch.device("cpu")))
    with caplog.at_level(logging.INFO, logger="honed.engine.fused"):
        path.prepare(model)
    assert not path.embeddings_on_host
    said = [r for r in caplog.records if "input embeddings stay on the GPU" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == level and "tied to lm_head" in said[0].getMessage()


def test_off_cuda_the_path_leaves_the_table_alone(tiny_model_dir, caplog):
    model = lora_model(tiny_model_dir("llama3"))
    path = FusedPath(resolve_engine_settings(cfg_for("offload", embeddings_on_host=True), torch.device("cpu")))
    with caplog.at_level(logging.INFO, logger="honed.engine.fused"):
        path.prepare(model)
    assert not path.embeddings_on_host and "(not a CUDA device)" in caplog.text


def test_honed_train_records_where_the_embeddings_were(tmp_path, monkeypatch):
    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train import model_setup, sft

    monkeypatch.setattr(model_setup, "select_path", lambda model, settings: AnywherePath(settings))
    base = build_tiny_model("llama3", tmp_path / "base", hidden_size=64, layers=2)
    data = write_numbered_qa(tmp_path / "qa.jsonl")
    losses = {}
    for wanted in (False, True):
        cfg = train_config(base, data, tmp_path / f"out-{wanted}", max_steps=3, learning_rate=1e-3, memory="offload", embeddings_on_host=wanted)
        losses[wanted] = sft.train(cfg, show_progress=False).losses
        assert json.loads((tmp_path / f"out-{wanted}" / "run_info.json").read_text())["model"]["embeddings_on_host"] is wanted
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)


def test_token_ids_past_the_embeddings_stop_at_the_sample():
    samples = [TokenizedSample([1, 2, 3], [1, 2, 3], "a.jsonl:1"), TokenizedSample([4, 99], [4, 99], "a.jsonl:2")]
    check_token_ids(samples[:1], 10, "tiny")
    with pytest.raises(DataError, match=r"a\.jsonl:2: token id 99 is past the 10 input embeddings of tiny"):
        check_token_ids(samples, 10, "tiny")


def test_the_host_memory_warning_comes_once_for_the_final_plan(tiny_model_dir, monkeypatch, caplog):
    """Moving the table plans a second time; the warning about pinning most of the host's memory is
    for the plan the run keeps, said once."""
    from honed.engine import fused
    from honed.engine.memory import MemoryPlan

    monkeypatch.setattr(fused, "available_host_bytes", lambda: 1.0)  # any offload plan pins more than this
    path = FusedPath(resolve_engine_settings(cfg_for("offload"), torch.device("cuda")))
    path.model_config = causal_lm_of(lora_model(tiny_model_dir("llama3"))).config
    path.plan = MemoryPlan("offload", 2, 0.0)
    with caplog.at_level(logging.WARNING, logger="honed.engine.fused"):
        path.warn_if_host_short()
        path.plan = MemoryPlan("none", 0, 0.0)
        path.warn_if_host_short()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("fused path: offloading keeps") and "lower data.max_seq_length" in said[0]
