"""Paired A/B comparison: tests pinned to hand-computed p-values, CI against scipy's bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from honed.eval.compare import bootstrap_ci, compare_models, paired_comparison


def test_mcnemar_exact_on_discordant_pairs():
    # 5 samples right only for A, 0 only for B: two-sided binomial p = 2 * 0.5**5.
    r = paired_comparison([1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 1, 0], higher_is_better=True)
    assert r["test"] == "mcnemar_exact" and r["p_value"] == pytest.approx(0.0625)
    assert (r["wins"], r["ties"], r["losses"]) == (5, 3, 0)
    assert r["diff"] == pytest.approx(5 / 8)


def test_wilcoxon_exact_when_all_differences_positive():
    a = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    b = [a[i] - (i + 1) * 0.01 for i in range(6)]
    r = paired_comparison(a, b, higher_is_better=True)
    assert r["test"] == "wilcoxon" and r["p_value"] == pytest.approx(2 / 64)  # one of 2^6 sign patterns, two-sided


def test_lower_is_better_turns_wins_around():
    r = paired_comparison([1.0, 2.0, 3.0], [2.0, 2.0, 1.0], higher_is_better=False)
    assert (r["wins"], r["ties"], r["losses"]) == (1, 1, 1)


def test_identical_models_have_p_one_and_zero_interval():
    r = paired_comparison([0.3, 0.5, 0.9], [0.3, 0.5, 0.9], higher_is_better=True)
    assert r["p_value"] == 1.0 and r["ci_low"] == r["ci_high"] == 0.0


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.normal(0.6, 0.2, 80)
    b = a - rng.normal(0.05, 0.1, 80)
    low, high = bootstrap_ci(a, b, n_resamples=4000, seed=3)
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=4000, method="percentile", random_state=7).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.006) and high == pytest.approx(ref.high, abs=0.006)
    assert bootstrap_ci(a, b, seed=3) == bootstrap_ci(a, b, seed=3)  # fixed seed: same interval


def test_compare_models_uses_per_sample_rows_and_refusal_decisions():
    rows_a = [{"rougeL": 0.9, "refused": False}, {"rougeL": 0.7, "refused": False}, {"refused": True}]
    rows_b = [{"rougeL": 0.2, "refused": False}, {"rougeL": 0.1, "refused": True}, {"refused": False}]
    out = compare_models(rows_a, rows_b, ["in_domain", "in_domain", "out_of_domain"], n_resamples=200)
    assert set(out) == {"rougeL", "correct_decision"}
    d = out["correct_decision"]
    assert (d["mean_a"], d["mean_b"]) == (1.0, pytest.approx(1 / 3)) and d["test"] == "mcnemar_exact"
    assert (d["wins"], d["ties"], d["losses"]) == (2, 1, 0)
