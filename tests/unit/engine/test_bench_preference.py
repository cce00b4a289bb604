"""`honed bench --objective dpo`: the run's objective and step are honed train's, on random pairs (checked on a CPU)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from honed.bench.preference import random_pair_batches
from honed.bench.run import bench_config, bench_step, build_bench_run
from honed.commands import bench


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_dpo_bench_step_is_a_dpo_train_step(tiny_model_dir):
    args = parse("--seq", "32", "--batch", "2", "--rank", "4", "--objective", "dpo")
    cfg = bench_config(str(tiny_model_dir("llama3")), args)
    cfg.training.precision = "fp32"
    assert cfg.objective == "dpo"
    run = build_bench_run(cfg, total_steps=2, device=torch.device("cpu"))
    assert run.objective.name == "dpo" and run.objective.reference == "adapter_off"
    batches = random_pair_batches(vocab_size=200, first_token_id=10, seq=32, batch=2, n_batches=2, pad_id=0, padding_free=False)
    assert batches[0]["input_ids"].shape == (2, 64) and run.objective.weight(batches[0]) == 2
    first = float(bench_step(run, batches[0]))
    assert first == pytest.approx(math.log(2), abs=1e-6)  # a fresh adapter (B = 0): policy = reference
    assert float(bench_step(run, batches[1])) != pytest.approx(math.log(2), abs=1e-6)  # the step moved the adapter


def test_lengths_is_refused_with_a_preference_objective():
    from honed.bench.run import run_bench
    from honed.errors import HonedError

    with pytest.raises(HonedError, match="--lengths times SFT"):
        run_bench(parse("--objective", "dpo", "--lengths", "alpaca"))
