"""`honed bench --lengths`: the shipped length distribution and the packed micro-batches (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from honed.bench.data import (
    IGNORE,
    bench_data,
    count_tokens,
    draw_lengths,
    length_stats,
    load_length_histogram,
    throughput,
    trained_tokens,
)
from honed.data.packing import collate
from honed.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "src" / "honed" / "resources" / "bench" / "alpaca_llama3.json"


def test_the_same_seed_draws_the_same_lengths_and_a_longer_draw_starts_with_a_shorter_one():
    alpaca = load_length_histogram("alpaca")
    first = draw_lengths(alpaca, 3000, seed=1)
    assert first == draw_lengths(alpaca, 3000, seed=1)
    assert first[:1000] == draw_lengths(alpaca, 1000, seed=1)
    assert first != draw_lengths(alpaca, 3000, seed=2)
    # pinned, so a change of the file or of the drawing shows up here
    assert first[:8] == [71, 243, 164, 207, 57, 284, 241, 150]


def test_alpaca_lengths_have_the_documented_shape():
    """Mostly short, mean about 190, a tail into the high hundreds (the generator's docstring)."""
    lengths = draw_lengths(load_length_histogram("alpaca"), 20_000, seed=1)
    stats = length_stats(lengths)
    assert 170 <= stats["mean"] <= 215
    assert 140 <= stats["p50"] <= 195
    assert 50 <= stats["p10"] <= 80
    assert 310 <= stats["p90"] <= 400
    assert 580 <= stats["p99"] <= 780
    assert min(lengths) >= 33 and stats["max"] <= 2048
    # the header's statistics describe the bins
    header = load_length_histogram("alpaca")["stats"]
    assert abs(header["mean"] - stats["mean"]) < 6 and abs(header["p90"] - stats["p90"]) <= 16


def test_lengths_over_max_length_are_cut_to_it():
    lengths = draw_lengths(load_length_histogram("alpaca"), 5000, seed=1, max_length=256)
    assert max(lengths) == 256
    uncut = draw_lengths(load_length_histogram("alpaca"), 5000, seed=1)
    assert lengths == [min(n, 256) for n in uncut]


def test_the_generator_writes_the_shipped_file():
    made = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_length_histogram.py")], capture_output=True, text=True, check=True)
    assert json.loads(made.stdout) == json.loads(SHIPPED.read_text())


def test_a_histogram_file_works_and_a_wrong_one_names_itself(tmp_path):
    good = tmp_path / "lengths.json"
    good.write_text(json.dumps({"bins": [[100, 100, 1]]}))
    assert draw_lengths(load_length_histogram(str(good)), 3) == [100, 100, 100]
    with pytest.raises(DataError, match="neither a shipped distribution"):
        load_length_histogram("no-such-thing")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bins": [[10, 5, 1]]}))
    with pytest.raises(DataError, match="bad.json.*lo <= hi"):
        load_length_histogram(str(bad))
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not a length histogram"):
        load_length_histogram(str(bad))


def test_bench_data_plans_full_micro_batches_the_same_way_every_time():
    args = dict(vocab_size=1000, seq=1024, batch=4, warmup=2, steps=5)
    data = bench_data("alpaca", **args)
    assert len(data.warmup) == 2 and len(data.timed) == 5
    assert all(len(mb) == 4 for mb in data.warmup + data.timed)
    assert all(sum(len(s.input_ids) for s in row) <= 1024 for mb in data.timed for row in mb)
    # greedy packing fills rows: a row ends only where the next sample would not fit
    rows = [row for mb in data.warmup + data.timed for row in mb]
    for row, following in zip(rows, rows[1:]):
        assert sum(len(s.input_ids) for s in row) + len(following[0].input_ids) > 1024
    again = bench_data("alpaca", **args)
    assert again.fingerprint() == data.fingerprint()
    assert bench_data("alpaca", **{**args, "vocab_size": 999}).fingerprint() != data.fingerprint()
    # the warm-up micro-batches come first and the timed ones do not repeat them
    ids = [id(s) for mb in data.warmup + data.timed for row in mb for s in row]
    assert len(ids) == len(set(ids))


def test_a_small_sample_count_repeats_its_micro_batches():
    data = bench_data("alpaca", vocab_size=1000, seq=512, batch=2, warmup=1, steps=6, samples=12)
    assert data.drawn == 12
    tokens = [[[s.input_ids for s in row] for row in mb] for mb in data.warmup + data.timed]
    period = next(k for k in range(1, 7) if tokens[k] == tokens[0])
    assert period < 7 and all(tokens[i] == tokens[i % period] for i in range(7))


def test_samples_are_random_tokens_with_the_first_label_masked():
    data = bench_data("alpaca", vocab_size=500, seq=512, batch=2, warmup=0, steps=2)
    for s in (s for mb in data.timed for row in mb for s in row):
        assert s.labels[0] == IGNORE and s.labels[1:] == s.input_ids[1:]
        assert all(10 <= t < 500 for t in s.input_ids)


@pytest.mark.parametrize("padding_free", [False, True])
def test_effective_tokens_count_the_samples_and_nothing_else(padding_free):
    data = bench_data("alpaca", vocab_size=1000, seq=1024, batch=4, warmup=0, steps=3)
    batches = [collate(mb, packing=True, pad_id=3, padding_free=padding_free) for mb in data.timed]
    lengths = data.timed_lengths()
    effective = sum(count_tokens(b)[0] for b in batches)
    total = sum(count_tokens(b)[1] for b in batches)
    assert effective == sum(lengths)
    assert sum(trained_tokens(b) for b in batches) == sum(n - 1 for n in lengths)
    flow = throughput(batches, seconds=2.0)
    assert flow["effective_tokens_per_s"] == round(sum(lengths) / 2, 1)
    if padding_free:
        assert total == effective and flow["padding_pct"] == 0.0 and flow["tokens_per_s"] == flow["effective_tokens_per_s"]
        assert all(b["input_ids"].shape[0] == 1 for b in batches)
    else:
        widths = [b["input_ids"].shape[1] for b in batches]
        assert total == sum(4 * w for w in widths) > effective
        assert flow["padding_pct"] == round(100 * (total - effective) / total, 2)
        # padding is never trained and has its own positions, so it is a "sample" of its own
        for b in batches:
            assert ((b["sample_index"] < 0) <= (b["labels"] == IGNORE)).all()
