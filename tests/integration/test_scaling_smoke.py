"""benchmarks/scaling.py's group `ddp` (honed) and `peers` rows on the CPU: 2 gloo ranks, 2 steps, a
toy llama built by the same build_shape as llama-8b (its stand-in word-level tokenizer included).

The same code path as on the GPUs (model folder built in a child, config and data generated, torchrun
on scaling_rank.py, which runs `honed train` through honed's CLI, each rank's record summarised; the
peer's RESULT line parsed), only the shape and device differ.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaling.py"
SEQ = 48


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scaling"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_shape(scaling, tmp_path_factory):
    return scaling.model_dir_for("tiny", tmp_path_factory.mktemp("models"))


def test_two_gloo_ranks_train_through_honeds_cli_and_the_record_matches_its_log(scaling, tiny_shape, tmp_path):
    lora = scaling.plan("ddp", world_sizes=(2,), shape="tiny", seq=SEQ, batch=1, steps=1, warmup=1, device="cpu")[0]
    assert (lora.workload, lora.world) == ("lora", 2)
    run_dir = tmp_path / lora.name
    record = scaling.execute(lora, run_dir, tiny_shape, timeout=240, keep_outputs=True)
    assert "error" not in record, record.get("error")

    ranks = [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["rc"]) for r in ranks] == [(0, 2, 0), (1, 2, 0)]
    # every packed row is full: 2 ranks × 1 row × SEQ tokens a step (the samples are longer and truncated)
    assert [s["tokens"] for s in ranks[0]["steps"]] == [2 * SEQ, 2 * SEQ]
    timed = ranks[0]["steps"][1]
    assert record["tokens_per_s"] == round(2 * SEQ / timed["seconds"], 1)
    assert record["tokens_per_s_per_gpu"] == round(record["tokens_per_s"] / 2, 1)
    assert record["peak_alloc_gib_per_rank"] == [None, None]  # no CUDA here

    out = run_dir / "output"
    logged = [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "train"]
    assert record["losses"] == [round(x, 5) for x in logged]
    model = json.loads((out / "run_info.json").read_text())["model"]
    assert (model["world_size"], model["global_batch_rows"]) == (2, 2)  # one DDP job, not two single runs


def test_the_hf_accelerate_peer_trains_the_same_row_on_two_gloo_ranks(scaling, tiny_shape, tmp_path):
    lora = scaling.plan("peers", world_sizes=(2,), shape="tiny", seq=SEQ, batch=1, steps=1, warmup=1, device="cpu")[0]
    assert (lora.stack, lora.workload, lora.strategy, lora.world) == ("hf-accelerate", "lora", "ddp", 2)
    record = scaling.execute(lora, tmp_path / lora.name, tiny_shape, timeout=240)
    assert "error" not in record, record.get("error")
    assert (record["world"], record["timed_steps"], record["fsdp"], record["peak_alloc_gib_per_rank"]) == (2, 1, False, [None, None])
    assert len(record["losses"]) == 2  # warm-up step and timed step, as logged by the Trainer
    # 2 ranks × 1 row × SEQ tokens in the timed step's seconds (both rounded in the RESULT)
    assert record["tokens_per_s"] * record["step_s_each"][0] == pytest.approx(2 * SEQ, rel=1e-3)


def test_the_rendezvous_group_trains_two_node_groups_and_checks_their_losses(scaling, tiny_shape, tmp_path):
    specs = scaling.plan("rendezvous", world_sizes=(2,), rendezvous_shape="tiny", seq=SEQ, batch=1, steps=1, warmup=1, device="cpu")
    call = {"device": "cpu", "date": "2026-12-05 10:00 UTC", "commit": "abc1234", "call_id": "rendezvous-test"}
    results = scaling.run_group("rendezvous", specs, call=call, work=tmp_path / "w", models=tiny_shape.parent,
                                results_path=tmp_path / "r.json", timeout=240, show=lambda line: None)
    assert [r.get("error") for r in results["runs"]] == [None, None]
    assert [(r["nnodes"], r["world"]) for r in results["runs"]] == [(1, 2), (2, 2)]
    one, two = results["runs"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)  # gloo, fp32: the same job either way
    (check,) = results["checks"]
    assert (check["passed"], check["steps"], check["world"]) == (True, 2, 2)
    assert json.loads((tmp_path / "r.json").read_text()) == results
