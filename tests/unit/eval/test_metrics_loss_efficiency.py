"""Token-weighted loss/perplexity and latency/throughput helpers."""

import math

import numpy as np
import pytest
import torch

from honed.eval.metrics import latency_percentiles, loss_and_perplexity, tokens_per_second


def test_loss_is_weighted_by_tokens_not_batches():
    # batch means 1.0 (10 tokens) and 3.0 (2 tokens): by tokens (10 + 6) / 12, not (1 + 3) / 2.
    result = loss_and_perplexity([(10.0, 10), (6.0, 2)])
    assert result.mean_loss == pytest.approx(16 / 12)
    assert result.perplexity == pytest.approx(math.exp(16 / 12))
    assert (result.n_tokens, result.n_batches) == (12, 2)


def test_loss_accepts_torch_scalars_and_generators():
    batches = ((torch.tensor(2.5), torch.tensor(5)) for _ in range(3))
    result = loss_and_perplexity(batches)
    assert result.mean_loss == pytest.approx(0.5) and result.n_tokens == 15


def test_loss_errors_are_clear():
    with pytest.raises(ValueError, match="no batches"):
        loss_and_perplexity([])
    with pytest.raises(ValueError, match="0 target tokens"):
        loss_and_perplexity([(0.0, 0)])
    with pytest.raises(ValueError, match="batch 1"):
        loss_and_perplexity([(1.0, 1), (float("nan"), 1)])


def test_perplexity_overflow_is_inf():
    assert loss_and_perplexity([(1000.0, 1)]).perplexity == math.inf


def test_latency_percentiles_equal_numpy():
    seconds = [0.8, 0.1, 0.35, 2.0, 0.4, 0.45, 0.5, 0.33]
    result = latency_percentiles(seconds)
    assert result["p50"] == pytest.approx(np.percentile(seconds, 50))
    assert result["p95"] == pytest.approx(np.percentile(seconds, 95))
    assert result["mean"] == pytest.approx(np.mean(seconds)) and result["n"] == 8
    assert set(latency_percentiles(seconds, (90, 99.9))) == {"p90", "p99.9", "mean", "n"}
    with pytest.raises(ValueError, match="no latencies"):
        latency_percentiles([])
    with pytest.raises(ValueError, match=">= 0"):
        latency_percentiles([0.1, -1.0])


def test_tokens_per_second_is_total_over_total():
    # per-request rates 100/1 and 10/1 → mean-of-rates 55, but total 110 tokens / 2 s = 55;
    # unequal times tell them apart: 100/1 and 10/9 → 110 / 10 = 11.
    assert tokens_per_second([100, 10], [1.0, 9.0]) == pytest.approx(11.0)
    assert tokens_per_second(256, 2.0) == 128.0
    with pytest.raises(ValueError, match="> 0 seconds"):
        tokens_per_second(10, 0.0)
