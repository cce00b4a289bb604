"""How `honed eval` deals batches out to ranks, and `--nproc-per-node` (torchrun's launcher, mocked here;
tests/integration/test_eval_distributed.py runs two real ranks)."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from honed.errors import ConfigError
from honed.eval.sharding import EvalShard, loss_sums
from honed.train.distributed import DistContext


def _rank(rank: int, world: int) -> EvalShard:
    return EvalShard(DistContext(rank=rank, local_rank=rank, world_size=world, backend="gloo"))


def test_each_rank_runs_every_world_th_batch_and_results_land_at_their_items(monkeypatch):
    shard = _rank(1, 3)
    monkeypatch.setattr(EvalShard, "all_ranks", lambda self, value: [[], value, []])  # ranks 0 and 2 sent nothing
    calls = []
    out = shard.map_batches(list("abcdefghij"), 2, lambda chunk, k: calls.append((k, chunk)) or [c.upper() for c in chunk])
    assert calls == [(1, ["c", "d"]), (4, ["i", "j"])]
    assert out == [None, None, "C", "D", None, None, None, None, "I", "J"]
    assert [_rank(r, 3).share_size(10, 2) for r in range(3)] == [4, 4, 2]
    assert _rank(0, 2).share_size(11, 4) == 7 and _rank(1, 2).share_size(11, 4) == 4


def test_gathered_parts_are_put_back_in_sample_order(monkeypatch):
    # What rank 0 gets back from 2 ranks over 5 items in batches of 2: its own batches 0 and 2, rank 1's batch 1.
    monkeypatch.setattr(EvalShard, "all_ranks", lambda self, value: [value, [(2, ["c!", "d!"])]])
    assert _rank(0, 2).map_batches(list("abcde"), 2, lambda chunk, k: [c + "!" for c in chunk]) == ["a!", "b!", "c!", "d!", "e!"]


def test_a_work_function_that_drops_an_item_is_an_error():
    with pytest.raises(RuntimeError, match="batch 0: 1 results for 2 items"):
        EvalShard().map_batches([1, 2], 2, lambda chunk, k: chunk[:1])


def test_loss_sums_deals_out_the_length_sorted_batches_of_sample_loss_sums(monkeypatch):
    """sample_loss_sums batches sequences of similar length; each rank gets one of those batches,
    not a batch of neighbours in file order (which would pad differently)."""
    from types import SimpleNamespace

    scored = []

    def fake_sums(model, chunk, *, device, pad_id, batch_size):
        scored.append([len(s.input_ids) for s in chunk])
        return [(float(len(s.input_ids)), len(s.input_ids) - 1) for s in chunk]

    monkeypatch.setattr("honed.eval.sharding.sample_loss_sums", fake_sums)
    seqs = [SimpleNamespace(input_ids=[0] * n) for n in (9, 3, 14, 6, 11, 5, 8)]
    monkeypatch.setattr(EvalShard, "all_ranks", lambda self, value: [[], value])
    out = loss_sums(None, seqs, device="cpu", pad_id=0, batch_size=3, shard=_rank(1, 2))
    assert scored == [[8, 9, 11]]  # rank 1 of 2: the second of the batches [3, 5, 6], [8, 9, 11], [14]
    assert out == [(9.0, 8), None, None, None, (11.0, 10), None, (8.0, 7)]  # back at their samples' places
    scored.clear()
    monkeypatch.undo()
    monkeypatch.setattr("honed.eval.sharding.sample_loss_sums", fake_sums)
    assert loss_sums(None, seqs, device="cpu", pad_id=0, batch_size=3) == [(float(len(s.input_ids)), len(s.input_ids) - 1) for s in seqs]
    assert scored == [[3, 5, 6], [8, 9, 11], [14]]


def _parse(argv):
    from honed.commands.eval import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


@pytest.fixture
def launched(monkeypatch):
    """Replaces torchrun's launcher: records what it was asked to run and the config file the workers would read."""
    seen = {}

    def fake_launch(honed_args, **kwargs):
        seen.update(args=honed_args, kwargs=kwargs, config=yaml.safe_load(open(honed_args[1], encoding="utf-8")))
        return 0

    monkeypatch.setattr("honed.train.launch.launch", fake_launch)
    return seen


def test_nproc_per_node_launches_workers_on_the_resolved_config(tmp_path, launched):
    from honed.commands.eval import run
    from honed.eval.config import eval_config_from_dict

    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "q", "reference": "a"}) + "\n")
    (tmp_path / "eval.yaml").write_text("models:\n  - path: some/model\ndata:\n  path: eval.jsonl\n")
    args = _parse([str(tmp_path / "eval.yaml"), "generation.batch_size=3", "--baseline", "base", "--max-new-tokens", "5",
                   "--output", str(tmp_path / "rep"), "--nproc-per-node", "2", "--no-progress"])
    assert run(args) == 0
    assert launched["args"][0] == "eval" and launched["args"][2:] == ["--no-progress"]
    assert launched["kwargs"] == {"nproc_per_node": 2}
    cfg = eval_config_from_dict(launched["config"])  # what every worker evaluates: file, override and flags in one
    assert cfg.data.path == str(tmp_path / "eval.jsonl") and [m.path for m in cfg.models] == ["some/model", "base"]
    assert cfg.generation.batch_size == 3 and cfg.generation.max_new_tokens == 5 and cfg.output_dir == str(tmp_path / "rep")
    assert cfg.baseline_name() == "base"


def test_nproc_per_node_refuses_bad_counts_cv_and_a_full_output_folder(tmp_path, launched):
    from honed.commands.eval import run
    from honed.errors import OutputExistsError

    base = ["--model", "m", "--data", "d.jsonl"]
    with pytest.raises(ConfigError, match="--nproc-per-node 0: give at least 1"):
        run(_parse([*base, "--nproc-per-node", "0"]))
    with pytest.raises(ConfigError, match="--cv trains its folds"):
        run(_parse(["--cv", "2", "train.yaml", "--nproc-per-node", "2"]))
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--overwrite"):  # before any worker starts
        run(_parse([*base, "--output", str(tmp_path / "rep"), "--nproc-per-node", "2"]))
    assert launched == {}
