"""benchmarks/scaling.py and scaling_report.py without a GPU: the plan, the commands, the configs,
RESULT parsing, the efficiency/ratio arithmetic against hand-computed numbers, merging and the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scaling():
    return load("scaling", BENCH / "scaling.py")


@pytest.fixture(scope="module")
def report(scaling):
    return sys.modules["scaling_report"]


# ---- the plan and its commands ----------------------------------------------------------------------


def test_each_group_plans_the_issue_rows(scaling):
    names = {g: [s.name for s in scaling.plan(g)] for g in scaling.GROUPS}
    assert names["ddp"] == [f"honed-llama-8b-{w}-ddp-{n}gpu" for w in ("lora", "qlora") for n in (1, 2, 4)]
    assert names["fsdp"] == ["honed-llama-8b-full-fsdp-2gpu", "honed-llama-8b-full-fsdp-offload-2gpu",
                             "honed-llama-8b-full-fsdp-4gpu", "honed-llama-8b-full-fsdp-offload-4gpu"]
    assert names["peers"] == [n.replace("honed-", "hf-accelerate-") for n in names["ddp"] + names["fsdp"]]
    assert names["rendezvous"] == ["honed-llama-1b-lora-ddp-4gpu", "honed-llama-1b-lora-ddp-4gpu-2nodes"]
    spec = scaling.plan("ddp")[0]
    assert (spec.seq, spec.batch, spec.steps, spec.warmup) == (2048, 2, 8, 2)
    assert [s.name for s in scaling.plan("rendezvous", world_sizes=(1, 2))][-1] == "honed-llama-1b-lora-ddp-2gpu-2nodes"
    assert [s.name for s in scaling.plan("peers", world_sizes=(2,), workloads=("qlora",))] == ["hf-accelerate-llama-8b-qlora-ddp-2gpu"]
    with pytest.raises(SystemExit, match="2 or more GPUs"):
        scaling.plan("rendezvous", world_sizes=(1,))


def test_two_node_groups_split_the_gpus_and_meet_at_one_endpoint(scaling, tmp_path):
    spec = scaling.plan("rendezvous")[1]
    groups = scaling.commands(spec, tmp_path / "run", model_dir=tmp_path / "m", endpoint="127.0.0.1:4242")
    assert [env for _, env in groups] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    for k, (argv, _) in enumerate(groups):
        text = " ".join(argv)
        assert "--nproc-per-node 2 " in text and "--nnodes 2 --node-rank " + str(k) in text
        assert "--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:4242" in text and "--standalone" not in text
        assert argv[-8:] == [str(scaling.HERE / "scaling_rank.py"), "--record-dir", str(tmp_path / "run" / "ranks"), "--warmup", "2", "train",
                             str(tmp_path / "run" / "config.yaml"), "--no-progress"]
    one = scaling.commands(scaling.plan("rendezvous")[0], tmp_path / "r1", model_dir=tmp_path / "m")
    assert len(one) == 1 and "--standalone" in one[0][0] and one[0][1] == {}


def test_the_peer_command_carries_the_row(scaling, tmp_path):
    spec = [s for s in scaling.plan("peers") if s.offload and s.world == 4][0]
    (argv, env), = scaling.commands(spec, tmp_path, model_dir=tmp_path / "llama-8b")
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and env == {}
    assert argv[argv.index("--model") + 1] == str(tmp_path / "llama-8b")
    assert argv[-1] == "--offload" and argv[argv.index("--workload") + 1] == "full" and argv[argv.index("--strategy") + 1] == "fsdp"


def test_generated_configs_are_valid_honed_configs(scaling):
    from honed.config import config_from_dict

    ddp, qlora = scaling.plan("ddp", world_sizes=(2,))
    cfg = config_from_dict(scaling.honed_config(ddp, model_dir="m", data_path="d.jsonl", output_dir="o"))
    assert (cfg.method, cfg.distributed.strategy, cfg.training.max_steps, cfg.training.batch_size) == ("lora", "ddp", 10, 2)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.data.max_seq_length, cfg.training.precision) == (16, 16, 2048, "bf16")
    assert config_from_dict(scaling.honed_config(qlora, model_dir="m", data_path="d", output_dir="o")).method == "qlora"
    plain, offload = scaling.plan("fsdp", world_sizes=(2,))
    full = config_from_dict(scaling.honed_config(offload, model_dir="m", data_path="d", output_dir="o"))
    assert (full.method, full.distributed.strategy, full.distributed.fsdp_cpu_offload, full.training.gradient_checkpointing) == ("full", "fsdp", True, True)
    assert config_from_dict(scaling.honed_config(plain, model_dir="m", data_path="d", output_dir="o")).distributed.fsdp_cpu_offload is False


def test_random_samples_are_longer_than_a_row(scaling, tmp_path):
    path = scaling.write_random_samples(tmp_path / "d.jsonl", samples=3, seq=50, vocab=100)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 3
    assert all(len(r["output"].split()) == 50 and all(4 <= int(w[1:]) < 100 for w in r["output"].split()) for r in records)
    assert path.read_text() == scaling.write_random_samples(tmp_path / "e.jsonl", samples=3, seq=50, vocab=100).read_text()  # seeded


def test_dry_run_prints_every_groups_commands_and_builds_nothing(scaling, tmp_path, capsys):
    models = tmp_path / "models"
    assert scaling.main(["--group", "ddp", "--group", "rendezvous", "--world-sizes", "1,2", "--dry-run", "--models", str(models),
                         "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# group ddp: 4 run(s)" and out[5] == "# group rendezvous: 2 run(s)"
    assert len(out) == 9 and out[-1].startswith("CUDA_VISIBLE_DEVICES=1 ") and out[-2].startswith("CUDA_VISIBLE_DEVICES=0 ")
    assert f"{models}/llama-8b" not in " ".join(out) and "scaling_rank.py" in out[1]  # honed's runs carry no model path: the config does
    assert not models.exists() and not (tmp_path / "w").exists()


# ---- one run's result ---------------------------------------------------------------------------


def test_result_line_parsing(report):
    line = {"tokens_per_s": 10.0, "world": 2, "peak_alloc_gib_per_rank": [1.0, 1.5]}
    out = "noise\nRESULT " + json.dumps({**line, "tokens_per_s": 1.0}) + "\nRESULT " + json.dumps(line) + "\ntrailing"
    assert report.parse_result_line(out) == line  # the last one
    with pytest.raises(report.ResultError, match="peer-2: no 'RESULT"):
        report.parse_result_line("Traceback ...", where="peer-2")
    with pytest.raises(report.ResultError, match="not JSON"):
        report.parse_result_line("RESULT {oops")
    with pytest.raises(report.ResultError, match="lacks world, peak_alloc_gib_per_rank"):
        report.parse_result_line('RESULT {"tokens_per_s": 3}')


def rank_record(rank, seconds, *, world=2, peak=None, rc=0):
    steps = [{"step": i + 1, "seconds": s, "tokens": 8192, "loss": 2.0 - 0.1 * i} for i, s in enumerate(seconds)]
    return {"rank": rank, "world_size": world, "rc": rc, "steps": steps, "peak_alloc_gib": peak, "peak_reserved_gib": None}


def test_a_runs_ranks_summarised_by_hand(report):
    ranks = [rank_record(1, [2.1, 0.6, 0.2], peak=31.25), rank_record(0, [2.0, 0.5, 0.3], peak=30.5)]
    got = report.summarise_ranks(ranks, warmup=1)
    # timed: steps 2 and 3 of rank 0: 2 × 8192 tokens in 0.5 + 0.3 s
    assert got["tokens_per_s"] == 20480.0 and got["tokens_per_s_per_gpu"] == 10240.0
    assert (got["timed_steps"], got["step_s"]) == (2, 0.4)
    assert got["step_s_slowest_rank"] == 0.45  # max(0.5, 0.6), max(0.3, 0.2)
    assert got["peak_alloc_gib_per_rank"] == [30.5, 31.25] and report.peak_gib(got) == 31.25
    assert got["losses"] == [2.0, 1.9, 1.8]
    with pytest.raises(report.ResultError, match=r"ranks \[0\] wrote records; expected 0..1"):
        report.summarise_ranks(ranks[1:], warmup=1)
    with pytest.raises(report.ResultError, match=r"rank\(s\) \[1\] exited"):
        report.summarise_ranks([rank_record(0, [1, 1]), rank_record(1, [1, 1], rc=2)], warmup=1)
    with pytest.raises(report.ResultError, match="no timed step: 2 step"):
        report.summarise_ranks([rank_record(0, [1, 1], world=1)], warmup=2)


# ---- across runs --------------------------------------------------------------------------------

CALL_A = {"device": "4 × NVIDIA H200", "date": "2026-12-05 10:00 UTC", "commit": "abc1234", "call_id": "ddp-1"}
CALL_B = {"device": "4 × NVIDIA H200", "date": "2026-12-05 11:00 UTC", "commit": "abc1234", "call_id": "peers-1"}


def rec(stack, workload, world, tps, *, strategy="ddp", offload=False, peak=(20.0,), call=CALL_A, nnodes=1, shape="llama-8b"):
    return {"stack": stack, "shape": shape, "workload": workload, "strategy": strategy, "offload": offload, "world": world, "nnodes": nnodes,
            "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world, "peak_alloc_gib_per_rank": list(peak) * world, "call": call}


@pytest.fixture
def runs():
    peer = "hf-accelerate"
    return [rec("honed", "lora", 1, 10000), rec("honed", "lora", 2, 19000), rec("honed", "lora", 4, 36000),
            rec(peer, "lora", 1, 5000, call=CALL_B), rec(peer, "lora", 2, 9000, call=CALL_B), rec(peer, "lora", 4, 16000, call=CALL_A),
            rec("honed", "full", 2, 3000, strategy="fsdp", peak=(60.0,)), rec("honed", "full", 4, 5700, strategy="fsdp", peak=(35.5,)),
            rec(peer, "full", 2, 2500, strategy="fsdp", call=CALL_B)]


def test_efficiency_and_ratios_by_hand(report, runs):
    assert report.scaling_efficiency(19000, 2, 10000) == 0.95
    assert report.scaling_efficiency(5700, 4, 3000, base_world=2) == 0.95
    got = {(r["stack"], r["workload"], r["world"]): r for r in report.annotate(runs)}
    honed = lambda w, n: got[("honed", w, n)]  # noqa: E731
    assert "efficiency" not in honed("lora", 1)  # the base itself
    assert (honed("lora", 2)["efficiency"], honed("lora", 4)["efficiency"]) == (0.95, 0.9)  # 19000/20000, 36000/40000
    assert (got[("hf-accelerate", "lora", 2)]["efficiency"], got[("hf-accelerate", "lora", 4)]["efficiency"]) == (0.9, 0.8)
    assert (honed("full", 4)["efficiency"], honed("full", 4)["efficiency_base_world"]) == (0.95, 2)
    assert [honed("lora", n)["ratio_to_peer"] for n in (1, 2, 4)] == [2.0, 2.111, 2.25]
    assert [honed("lora", n)["peer_same_call"] for n in (1, 2, 4)] == [False, False, True]
    assert honed("full", 2)["ratio_to_peer"] == 1.2 and "ratio_to_peer" not in honed("full", 4)


def test_two_node_rows_are_not_scaling_bases_and_keep_their_own_row(report):
    one, two = rec("honed", "lora", 2, 1000, shape="llama-1b"), rec("honed", "lora", 2, 900, nnodes=2, shape="llama-1b")
    got = report.annotate([two, one])
    assert "efficiency" not in got[0] and "efficiency" not in got[1]
    assert len(report.merge([{"runs": [one, two]}])["runs"]) == 2


def test_merge_keeps_the_latest_run_of_a_row(report, runs):
    newer = {**runs[1], "tokens_per_s": 19500, "call": CALL_B}
    merged = report.merge([{"runs": [newer], "checks": []}, {"runs": runs, "checks": [{"check": "c", "world": 4, "passed": True}]}])
    assert len(merged["runs"]) == len(runs) and merged["checks"] == [{"check": "c", "world": 4, "passed": True}]
    assert [r["tokens_per_s"] for r in merged["runs"] if r["stack"] == "honed" and r["world"] == 2 and r["workload"] == "lora"] == [19500]


def test_results_file_round_trip(report, runs, tmp_path):
    path = tmp_path / "sub" / "r.json"
    assert report.load_results(path) == {"runs": [], "checks": []}
    report.write_results(path, {"runs": runs, "checks": []})
    assert report.load_results(path) == {"runs": runs, "checks": []}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left


def test_markdown_table(report, runs):
    check = report.loss_check("two node groups (c10d) against one", [2.5, 2.4001], [2.5, 2.4], world=4)
    table = report.markdown_table({"runs": runs, "checks": [check]}).splitlines()
    assert table[:2] == ["- call `ddp-1`: 4 × NVIDIA H200, 2026-12-05 10:00 UTC, commit `abc1234`",
                         "- call `peers-1`: 4 × NVIDIA H200, 2026-12-05 11:00 UTC, commit `abc1234`"]
    rows = table[5:11]
    assert rows == [
        "| llama-8b lora | ddp | 1 | 10,000 | 10,000 | – | 20.00 | 5,000 | 5,000 | – | 20.00 | 2.00× (other call) |",
        "| llama-8b lora | ddp | 2 | 19,000 | 9,500 | 95.0% | 20.00 | 9,000 | 4,500 | 90.0% | 20.00 | 2.11× (other call) |",
        "| llama-8b lora | ddp | 4 | 36,000 | 9,000 | 90.0% | 20.00 | 16,000 | 4,000 | 80.0% ✗ | 20.00 | 2.25× |",
        "| llama-8b full | fsdp | 2 | 3,000 | 1,500 | – | 60.00 | 2,500 | 1,250 | – | 20.00 | 1.20× (other call) |",
        "| llama-8b full | fsdp | 4 | 5,700 | 1,425 | 95.0% vs 2 | 35.50 | – | – | – | – | – |",
        "",
    ]
    assert table[-1] == "- two node groups (c10d) against one (4 GPUs): same losses over 2 steps, largest difference 0.0001"


def test_loss_check(report):
    assert report.loss_check("x", [1.0, 2.0], [1.0, 2.0], world=2) == {"check": "x", "world": 2, "steps": 2, "passed": True, "max_abs_diff": 0.0}
    assert report.loss_check("x", [1.0, 2.01], [1.0, 2.0], world=2)["passed"] is False  # 0.5% apart
    short = report.loss_check("x", [1.0], [1.0, 2.0], world=2)
    assert (short["passed"], short["why"]) == (False, "1 steps against 2")


def test_one_invocation_runs_its_groups_as_one_call_and_writes_results_and_table(scaling, tmp_path, monkeypatch):
    speeds = {("honed", 1): 10000, ("honed", 2): 19000, ("hf-accelerate", 1): 5000, ("hf-accelerate", 2): 9000}

    def fake_execute(spec, run_dir, model_dir, *, timeout, keep_outputs=False):
        assert model_dir == tmp_path / "m" / spec.shape
        tps = speeds[(spec.stack, spec.world)]
        losses = [2.0, 1.5001] if spec.nnodes == 2 else [2.0, 1.5]
        return {**spec.row(), "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / spec.world,
                "peak_alloc_gib_per_rank": [10.0] * spec.world, "losses": losses}

    monkeypatch.setattr(scaling, "execute", fake_execute)
    monkeypatch.setattr(scaling, "model_dir_for", lambda shape, models, build=True: models / shape)
    results, table = tmp_path / "r.json", tmp_path / "t.md"
    assert scaling.main(["--group", "ddp", "--group", "peers", "--group", "rendezvous", "--world-sizes", "1,2", "--workloads", "lora",
                         "--results", str(results), "--markdown", str(table), "--commit", "abc1234",
                         "--work", str(tmp_path / "w"), "--models", str(tmp_path / "m")]) == 0
    saved = json.loads(results.read_text())
    assert len(saved["runs"]) == 6 and len({json.dumps(r["call"]) for r in saved["runs"]}) == 1
    assert saved["runs"][0]["call"]["commit"] == "abc1234" and saved["runs"][0]["call"]["call_id"].startswith("ddp+peers+rendezvous-")
    assert saved["checks"] == [{"check": "two node groups (c10d) against one", "world": 2, "steps": 2, "passed": True, "max_abs_diff": 0.0001}]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| llama-8b")]
    assert rows == ["| llama-8b lora | ddp | 1 | 10,000 | 10,000 | – | 10.00 | 5,000 | 5,000 | – | 10.00 | 2.00× |",
                    "| llama-8b lora | ddp | 2 | 19,000 | 9,500 | 95.0% | 10.00 | 9,000 | 4,500 | 90.0% | 10.00 | 2.11× |"]
