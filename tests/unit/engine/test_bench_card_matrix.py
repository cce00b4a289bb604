"""benchmarks/card_matrix.py on CPU: the plan of each device call, parsing a stack's output, merging
results of several calls, and the table, from fake results (nothing runs on a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "card_matrix.py"
HONED_STACK = "cmd:python3 -m honed bench"


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("card_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["card_matrix"] = module  # its dataclass looks its module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("card_matrix", None)


def peer(tps, gib, losses, stack="x"):
    return {"stack": stack, "tokens_per_s": tps, "peak_alloc_gib": gib, "losses": losses}


def packed(tps, gib, loss_mean):
    return {"effective_tokens_per_s": tps, "peak_alloc_gib": gib, "loss_mean": loss_mean}


def test_the_plan_caps_each_group_and_runs_every_stack_of_every_row_once(cm):
    steps = cm.plan(["cap24", "full"], ["llama-8b-qlora", "packed-1b"], timeout=300, models="/m")
    assert [(s["group"], s["row"], s["stack"]) for s in steps] == [
        ("cap24", "llama-8b-qlora", "hf"), ("cap24", "llama-8b-qlora", "unsloth"), ("cap24", "llama-8b-qlora", "honed"),
        ("cap24", "packed-1b", "hf"), ("cap24", "packed-1b", "unsloth"), ("cap24", "packed-1b", "unsloth-padded"),
        ("cap24", "packed-1b", "honed"),
        ("full", "llama-8b-qlora", "hf"), ("full", "llama-8b-qlora", "unsloth"), ("full", "llama-8b-qlora", "honed"),
        ("full", "packed-1b", "hf"), ("full", "packed-1b", "unsloth"), ("full", "packed-1b", "unsloth-padded"),
        ("full", "packed-1b", "honed")]
    capped, full = steps[0], steps[7]
    assert capped["env"]["BENCH_GPU_CAP_GIB"] == "24"
    assert capped["env"]["PYTHONPATH"].split(":")[0] == str(cm.CAP_DIR)
    assert full["env"] == {"BENCH_MODELS": "/m"}
    honed = steps[2]["command"]
    assert honed[1].endswith("peer_bench.py")
    assert honed[2:] == ["--shape", "llama-8b", "--seq", "2048", "--batch", "2", "--steps", "8", "--warmup", "2", "--qlora",
                         "--stacks", HONED_STACK, "--timeout", "300"]
    assert steps[4]["command"][1] == "benchmarks/packed_peers.py"
    assert steps[4]["command"][-4:] == ["--stacks", "unsloth", "--timeout", "300"]


def test_the_dry_run_prints_one_block_per_group_with_its_commands(cm, capsys):
    assert cm.main(["--dry-run", "--rows", "llama-1b"]) == 0
    text = capsys.readouterr().out
    assert [line.split("(")[0].strip() for line in text.splitlines() if line.startswith("== group")] == [
        f"== group {g}" for g in ("cap16", "cap24", "cap48", "cap80", "full")]
    assert text.count("[llama-1b / honed]") == 5
    assert f'--stacks "{HONED_STACK}"' in text


def test_an_unknown_row_or_no_group_is_refused(cm):
    with pytest.raises(SystemExit) as e:
        cm.main(["--dry-run", "--rows", "llama-70b"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cm.main([])


def test_a_stack_output_gives_its_result_or_why_it_failed(cm):
    ok = 'building\n{"stack": "hf", "tokens_per_s": 6000.0, "peak_alloc_gib": 23.46}\n\nstack tok/s\nhf 6000'
    assert cm.parse_stack_output(ok)["tokens_per_s"] == 6000.0
    assert cm.parse_stack_output('RESULT {"effective_tokens_per_s": 5.0, "peak_alloc_gib": 1}')["effective_tokens_per_s"] == 5.0
    oom = "== hf failed (rc=1, 40s)\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert cm.parse_stack_output(oom) == {"error": "OOM"}
    assert cm.parse_stack_output("== unsloth timed out after 300s\n") == {"error": "timeout"}
    assert cm.parse_stack_output('== x failed (rc=1)\n{"not": "a result"}\nImportError') == {"error": "failed"}


def test_results_of_several_calls_merge_and_a_newer_result_replaces_the_older(cm):
    meta1, meta2 = {"commit": "aaa"}, {"commit": "bbb"}
    m = cm.empty_matrix()
    cm.record(m, "cap24", "llama-1b", "hf", peer(1.0, 1.0, [1.0]), meta1)
    cm.record(m, "cap24", "llama-1b", "honed", peer(2.0, 1.0, [1.0]), meta1)
    cm.record(m, "full", "llama-1b", "honed", peer(3.0, 1.0, [1.0]), meta1)
    later = cm.record(cm.empty_matrix(), "cap24", "llama-1b", "honed", peer(4.0, 1.0, [1.0]), meta2)
    cm.merge(m, later)
    assert m["groups"]["cap24"]["rows"]["llama-1b"]["hf"]["tokens_per_s"] == 1.0
    assert m["groups"]["cap24"]["rows"]["llama-1b"]["honed"]["tokens_per_s"] == 4.0
    assert m["groups"]["cap24"]["meta"] == meta2
    assert m["groups"]["full"]["rows"]["llama-1b"]["honed"]["tokens_per_s"] == 3.0
    assert m["groups"]["full"]["meta"] == meta1
    with pytest.raises(ValueError, match="not a card matrix"):
        cm.merge(m, {"schema": "other"})


def fake_matrix(cm):
    m = cm.empty_matrix()
    meta = {"device": "NVIDIA H200", "date": "2026-12-04", "commit": "abc1234", "command": "python benchmarks/card_matrix.py --group cap24"}
    hf_losses = [12.0, 11.0, 10.0]
    cm.record(m, "cap24", "llama-8b-lora", "hf", {"error": "OOM"}, meta)
    cm.record(m, "cap24", "llama-8b-lora", "unsloth", peer(11000.0, 16.73, [12.0, 11.0, 10.0]), meta)
    cm.record(m, "cap24", "llama-8b-lora", "honed", peer(12100.0, 15.36, [12.0, 11.0, 10.0]), meta)
    cm.record(m, "cap24", "llama-1b", "hf", peer(26805.0, 16.82, hf_losses), meta)
    cm.record(m, "cap24", "llama-1b", "unsloth", peer(56443.0, 3.71, hf_losses), meta)
    cm.record(m, "cap24", "llama-1b", "honed", peer(77457.0, 12.38, [12.0, 11.011, 10.0]), meta)
    cm.record(m, "cap24", "packed-1b", "hf", packed(11429.0, 16.76, 12.175), meta)
    cm.record(m, "cap24", "packed-1b", "unsloth", packed(9324.0, 3.29, 12.175), meta)
    cm.record(m, "cap24", "packed-1b", "unsloth-padded", packed(18500.0, 3.70, 12.175), meta)
    cm.record(m, "cap24", "packed-1b", "honed", packed(36404.0, 3.27, 12.1872), meta)
    return m


def test_the_table_shows_each_row_with_the_faster_unsloth_layout_ratio_and_loss(cm):
    lines = cm.format_table(fake_matrix(cm)).splitlines()
    assert "## a 24 GiB cap (NVIDIA H200, 2026-12-04, commit `abc1234`)" in lines
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| workload")]
    assert rows == [  # in ROWS order, not the order they were recorded
        "| llama-1b LoRA, 2048 × 4 | 26,805, 16.82 | 56,443, 3.71 | 77,457, 12.38 | 1.37× | 0.100% |",
        "| llama-8b LoRA, 2048 × 2 | OOM | 11,000, 16.73 | 12,100, 15.36 | 1.10× | – |",
        "| llama-1b, packed alpaca lengths, 2048 × 4 | 11,429, 16.76 | 18,500, 3.70 (unsloth-padded) | 36,404, 3.27 | 1.97× | 0.100% |",
    ]
    assert "Regenerate: `python benchmarks/card_matrix.py --group cap24`" in lines
    assert not any("full card" in line for line in lines)  # groups without results are left out


def test_merge_from_the_command_line_writes_json_and_table(cm, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    whole = fake_matrix(cm)
    a.write_text(json.dumps(whole))
    b.write_text(json.dumps(cm.record(cm.empty_matrix(), "full", "qwen-7b-lora", "honed", peer(15957.0, 32.44, [1.0]), {"commit": "def"})))
    out = tmp_path / "out"
    assert cm.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads((out / "card_matrix.json").read_text())
    assert sorted(merged["groups"]) == ["cap24", "full"]
    table = (out / "card_matrix.md").read_text()
    assert "| qwen-7b LoRA, 4096 × 1 | – | – | 15,957, 32.44 | – | – |" in table
    assert sorted(p.name for p in out.iterdir()) == ["card_matrix.json", "card_matrix.md"]  # no temporary files left
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    with pytest.raises(SystemExit):
        cm.main(["--merge", str(bad), "--out", str(out)])
