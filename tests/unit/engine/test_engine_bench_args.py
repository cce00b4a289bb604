"""`honed bench`'s arguments (no GPU needed): gradient clipping and the peers' batch order."""

from __future__ import annotations

import argparse

import pytest

from honed.commands import bench


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_max_grad_norm_defaults_to_honed_trains_and_turns_off_with_zero_or_none():
    assert parse().max_grad_norm == 1.0
    assert parse("--max-grad-norm", "0.5").max_grad_norm == 0.5
    for off in ("0", "none", "None", "off"):
        assert parse("--max-grad-norm", off).max_grad_norm is None
    with pytest.raises(SystemExit):
        parse("--max-grad-norm", "-1")


@pytest.mark.parametrize("value", [None, 0.5])
def test_bench_config_carries_max_grad_norm(value):
    args = parse("--max-grad-norm", str(value or 0))
    assert bench.bench_config("/tmp/unused-model", args).training.max_grad_norm == value


def test_timed_steps_restart_from_the_first_batch_as_in_peer_bench():
    assert bench.batch_order(3, 10) == [0, 1, 2] + [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert bench.batch_order(2, 4) == [0, 1, 0, 1, 2, 3]
