"""A/B comparison of two models on the same samples: paired bootstrap confidence intervals of the
difference, a paired significance test, and win/tie/loss counts, per metric.

Per-sample scores are paired by sample, so the test asks "does model A beat model B on the same
questions", which is far more sensitive than comparing two means.

- Bootstrap: resample the paired items with replacement (`n_resamples`, fixed `seed`), take the
  mean difference A − B of each resample, report the percentile interval (95 % by default).
- Test: McNemar's exact test (scipy binomtest on the discordant pairs) for 0/1 outcomes
  (exact match, contains reference, correct refusal decision); the Wilcoxon signed-rank test
  (scipy) for graded scores (ROUGE, chrF, METEOR, loss, absolute error).

>>> r = paired_comparison([1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 1, 0], higher_is_better=True)
>>> r["wins"], r["ties"], r["losses"], r["test"], round(r["p_value"], 4)
(5, 3, 0, 'mcnemar_exact', 0.0625)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# (per-sample key in predictions rows, label, higher is better, binary)
PAIRED_METRICS: tuple[tuple[str, str, bool, bool], ...] = (
    ("rougeL", "ROUGE-L", True, False),
    ("chrf", "chrF", True, False),
    ("bleu", "BLEU", True, False),
    ("meteor", "METEOR", True, False),
    ("exact_match", "exact match", True, True),
    ("contains_reference", "contains ref.", True, True),
    ("correct_decision", "correct answer/refuse decision", True, True),
    ("loss", "reference loss", False, False),
    ("abs_error", "absolute error (numeric)", False, False),
)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def bootstrap_ci(a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(a − b) over item resamples drawn with replacement."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(n_resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_test(a: np.ndarray, b: np.ndarray, binary: bool) -> tuple[str, float | None]:
    """(test name, two-sided p-value): McNemar exact for 0/1 outcomes, Wilcoxon signed-rank otherwise.
    p = 1.0 when the two never differ (no evidence of a difference)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if binary:
        only_a = int(np.sum((a == 1) & (b == 0)))
        only_b = int(np.sum((a == 0) & (b == 1)))
        if only_a + only_b == 0:
            return "mcnemar_exact", 1.0
        return "mcnemar_exact", float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    if np.all(a == b):
        return "wilcoxon", 1.0
    p = float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    return "wilcoxon", p if math.isfinite(p) else None


def paired_comparison(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool, binary: bool | None = None,
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0, tie_tolerance: float = 1e-9) -> dict:
    """Compare per-item scores `a` (model A) with `b` (model B), paired by position.

    Returns mean_a, mean_b, diff (A − B), ci_low/ci_high of the difference, the test and its
    p_value, and wins/ties/losses from A's side (a win is better by the metric's direction).
    """
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ValueError(f"paired scores need two equal non-empty lists, got {len(a_arr)} and {len(b_arr)}")
    if binary is None:
        binary = _is_binary(a_arr) and _is_binary(b_arr)
    diff = a_arr - b_arr
    better = diff > tie_tolerance if higher_is_better else diff < -tie_tolerance
    worse = diff < -tie_tolerance if higher_is_better else diff > tie_tolerance
    low, high = bootstrap_ci(a_arr, b_arr, n_resamples, confidence, seed)
    test, p = paired_test(a_arr, b_arr, binary)
    return {"n": int(len(a_arr)), "mean_a": float(a_arr.mean()), "mean_b": float(b_arr.mean()), "diff": float(diff.mean()),
            "ci_low": low, "ci_high": high, "confidence": confidence, "test": test, "p_value": p,
            "wins": int(better.sum()), "ties": int(len(diff) - better.sum() - worse.sum()), "losses": int(worse.sum()),
            "higher_is_better": higher_is_better}


def _per_sample_value(row: dict, key: str, split: str | None) -> float | None:
    if key == "correct_decision":
        if "refused" not in row or split is None:
            return None
        return float(row["refused"] == (split in ("out_of_domain", "near_domain")))
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else (
        float(value) if isinstance(value, bool) else None)


def compare_models(rows_a: Sequence[dict], rows_b: Sequence[dict], splits: Sequence[str | None], *,
                   n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0, alpha: float = 0.05) -> dict:
    """Every PAIRED_METRICS metric that both models have on at least two of the same samples.

    `rows_a`/`rows_b` are the per-sample score dicts of predictions.jsonl, in sample order.
    """
    out = {}
    for key, label, higher, binary in PAIRED_METRICS:
        pairs = [(va, vb) for ra, rb, split in zip(rows_a, rows_b, splits)
                 if (va := _per_sample_value(ra, key, split)) is not None and (vb := _per_sample_value(rb, key, split)) is not None]
        if len(pairs) < 2:
            continue
        a, b = zip(*pairs)
        result = paired_comparison(a, b, higher_is_better=higher, binary=binary, n_resamples=n_resamples,
                                   confidence=confidence, seed=seed)
        result["label"] = label
        result["significant"] = result["p_value"] is not None and result["p_value"] < alpha
        out[key] = result
    return out
