"""benchmarks/longest_seq.py on CPU: the order of the search's probes, how a probe's output is read,
resuming from a saved file, and the table (nothing runs on a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.fixture(scope="module")
def ls():
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling card_matrix.py
    yield importlib.import_module("longest_seq")
    sys.path.remove(str(BENCHMARKS))
    sys.modules.pop("longest_seq", None)


def fits(gib=30.0):
    return {"peak_alloc_gib": gib, "step_s": 60.0}


def run_search(ls, longest_that_fits, start=131072, step=16384, maximum=2**20):
    """The lengths the search probes against a stack that fits up to `longest_that_fits`."""
    probes, order = {}, []
    while (n := ls.next_length(probes, start, step, maximum)) is not None:
        order.append(n)
        probes[n] = fits() if n <= longest_that_fits else {"error": "OOM"}
        assert len(order) < 20
    return order, ls.longest(probes)


def test_the_search_doubles_then_halves_the_gap_to_the_step(ls):
    order, (low, high) = run_search(ls, longest_that_fits=350_000)
    assert order == [131072, 262144, 524288, 393216, 327680, 360448, 344064]
    assert (low, high) == (344064, 360448)  # within one step of the true limit, on both sides


def test_a_stack_that_fails_at_the_start_is_searched_downwards(ls):
    order, (low, high) = run_search(ls, longest_that_fits=40_000)
    assert order == [131072, 65536, 32768, 49152]
    assert (low, high) == (32768, 49152)


def test_the_search_stops_at_the_maximum_and_where_nothing_fits(ls):
    order, (low, high) = run_search(ls, longest_that_fits=10**9, maximum=524288)
    assert order == [131072, 262144, 524288] and (low, high) == (524288, None)
    order, (low, high) = run_search(ls, longest_that_fits=0)
    assert order == [131072, 65536, 32768, 16384] and (low, high) == (None, 16384)


def test_a_probe_reads_its_result_or_says_how_it_failed(ls):
    line = json.dumps({"stack": "unsloth", "tokens_per_s": 2000.0, "peak_alloc_gib": 70.1, "step_s": 120.0})
    assert ls.classify("noise\n" + line, 0)["peak_alloc_gib"] == 70.1
    assert ls.classify("torch.OutOfMemoryError: CUDA out of memory", 1) == {"error": "OOM"}
    assert ls.classify("== cmd:python3 -m honed bench failed (rc=-9, 300s)", 0) == {"error": "host"}
    assert ls.classify("some traceback", -9) == {"error": "host"}
    assert ls.classify("some traceback", 1) == {"error": "failed"}


def test_a_saved_search_resumes_and_its_table_names_the_bounds(ls, tmp_path):
    state = {"schema": ls.SCHEMA, "caps": {"80": {"meta": {"device": "H200", "date": "2026-12-05", "commit": "abc"},
                                                   "stacks": {"unsloth": {"131072": fits(40.0), "262144": {"error": "OOM"}}}}}}
    ls.save(state, tmp_path)
    again = ls.load(tmp_path / "longest_seq.json")
    assert ls.next_length(ls.probes_of(again, "80", "unsloth"), 131072, 16384, 2**20) == 196608
    table = (tmp_path / "longest_seq.md").read_text()
    assert "| unsloth | 131,072 | 40.0 | 60.0 | 262,144 (OOM) | 2 |" in table
    assert "a 80 GiB cap (H200, 2026-12-05, commit `abc`)" in table


def test_a_file_of_another_kind_is_refused(ls, tmp_path):
    (tmp_path / "longest_seq.json").write_text(json.dumps({"schema": "honed.bench.card_matrix", "groups": {}}))
    with pytest.raises(SystemExit, match="not a longest-sequence file"):
        ls.load(tmp_path / "longest_seq.json")


def test_a_maximum_off_the_step_grid_still_ends(ls):
    order, (low, high) = run_search(ls, longest_that_fits=990_000, maximum=1_000_000)
    assert order == [131072, 262144, 524288, 1_000_000, 753664, 868352, 933888, 966656, 983040]
    assert (low, high) == (983040, 1_000_000)


def test_a_search_is_continued_only_on_the_card_it_started_on(ls, tmp_path, monkeypatch):
    state = {"schema": ls.SCHEMA, "caps": {"full": {"meta": {"device": "NVIDIA H200"}, "stacks": {}}}}
    monkeypatch.setattr(ls, "call_meta", lambda name: {"device": "NVIDIA H100 80GB HBM3", "date": "d", "commit": "c"})
    args = type("Args", (), {"budget_s": 600, "start": 131072, "step": 16384, "max": 2**20, "probe_timeout": 300, "models": "m"})()
    with pytest.raises(SystemExit, match="ran on NVIDIA H200, this is NVIDIA H100"):
        ls.search(state, tmp_path, "full", ["unsloth"], args)


def test_a_probe_is_one_peer_bench_step_and_honed_args_reach_only_honed(ls):
    command = ls.probe_command("honed-offload", 262144, 300, "--host-memory-gib 120")
    assert command[command.index("--seq") + 1] == "262144"
    assert command[command.index("--stacks") + 1] == "cmd:python3 -m honed bench --memory offload --host-memory-gib 120"
    assert all(a in command for a in ("--qlora", "--steps", "--warmup")) and command[command.index("--steps") + 1] == "1"
    unsloth = ls.probe_command("unsloth", 262144, 300, "--host-memory-gib 120")
    assert unsloth[unsloth.index("--stacks") + 1] == "unsloth"
