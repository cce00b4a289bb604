"""benchmarks/device/summarize.py: the one-line summaries a device call ends with, from its logs and JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("device_summarize", ROOT / "benchmarks" / "device" / "summarize.py")
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def test_results_reads_the_rows_of_the_last_command_only(tmp_path):
    log = tmp_path / "peers.log"
    rows = [{"stack": "unsloth", "tokens_per_s": 10950.4, "peak_alloc_gib": 16.73},
            {"stack": "honed", "memory": "auto", "tokens_per_s": 12145.0, "peak_alloc_gib": 20.35, "host_mlp_layers": 9, "recomputed_layers": 6}]
    log.write_text("$ first command\n" + json.dumps({"stack": "old", "tokens_per_s": 1.0}) + "\n"
                   "$ second command\n" + "\n".join(json.dumps(r) for r in rows) + "\n== cmd:python3 -m honed bench --x failed (rc=1, 3s)\n")
    assert summarize.results(str(log)) == ("unsloth 10,950 tok/s 16.73 GiB; honed auto 12,145 tok/s 20.35 GiB (host_mlp 9, 6 recomputed); "
                                           "honed --x failed")


def test_matrix_gives_each_rows_ratio_and_names_failed_stacks(tmp_path):
    path = tmp_path / "card_matrix.json"
    path.write_text(json.dumps({"groups": {"cap24": {"rows": {
        "llama-8b-lora": {"honed": {"tokens_per_s": 13000}, "unsloth": {"tokens_per_s": 10000}, "hf": {"error": "OOM"}},
        "packed-1b": {"honed": {"effective_tokens_per_s": 50000}, "unsloth": {"error": "OOM"}, "unsloth-padded": {"tokens_per_s": 25000}},
    }}}}))
    assert summarize.matrix(str(path), "cap24") == "llama-8b-lora honed/Unsloth 1.30x (hf OOM); packed-1b honed/Unsloth 2.00x (unsloth OOM)"
    assert summarize.matrix(str(path), "cap16") == "no card_matrix.json"


def test_longest_gives_the_longest_fit_and_first_failure(tmp_path):
    path = tmp_path / "longest_seq.json"
    path.write_text(json.dumps({"caps": {"80": {"stacks": {"honed": {"131072": {}, "262144": {"error": "OOM"}, "196608": {}}}}}}))
    assert summarize.longest(str(path), "80") == "honed fits 196,608, fails 262,144 (OOM)"
