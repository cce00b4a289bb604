"""Metrics added beside the core scores of one model: numeric (regression) answers, diversity of
the answers, and whether each answer is in its reference's language.

Each looks only at in-domain samples (out-/near-domain references are refusal wordings).

>>> from honed.eval.config import EvalConfig
>>> regression_enabled(EvalConfig.model_validate({"models": [{"path": "m"}], "data": {"path": "d"}}), ["5.6 mmol/L", "12"])
True
"""

from __future__ import annotations

from honed.data.kinds import SHOULD_ANSWER
from honed.eval.metrics.diversity import diversity_metrics
from honed.eval.metrics.regression import extract_number, is_numeric_reference, regression_metrics


def _in_domain(samples) -> list:
    return [s for s in samples if s.split is None or s.split in SHOULD_ANSWER]


def regression_enabled(cfg, references: list[str | None]) -> bool:
    """`regression.enabled`, or with `null` (auto): no label set, and at least
    `regression.auto_share` of the references present are a number with at most a short unit."""
    if cfg.regression.enabled is not None:
        return cfg.regression.enabled
    if cfg.labels:  # numeric class labels ("0", "1") are classes, not quantities
        return False
    present = [r for r in references if r and r.strip()]
    return bool(present) and sum(map(is_numeric_reference, present)) / len(present) >= cfg.regression.auto_share


def _regression(cfg, samples, run) -> dict | None:
    chosen = _in_domain(samples)
    if not regression_enabled(cfg, [s.reference for s in chosen]):
        return None
    for s in chosen:
        truth, guess = extract_number(s.reference), extract_number(run.answers[s.index])
        row = run.per_sample[s.index]
        row["number"] = guess
        if truth is not None and guess is not None:
            row["abs_error"] = abs(guess - truth)
    return regression_metrics([run.answers[s.index] for s in chosen], [s.reference for s in chosen])


def _language(cfg, samples, run) -> dict | None:
    if not cfg.language_match:
        return None
    from honed.utils.language import identify_language

    matched = scored = 0
    per_language: dict[str, dict[str, int]] = {}
    for s in _in_domain(samples):
        if not (s.reference and s.reference.strip()):
            continue
        want, got = identify_language(s.reference), identify_language(run.answers[s.index] or "")
        if not want:
            continue
        scored += 1
        matched += want == got
        run.per_sample[s.index]["answer_language"] = got
        entry = per_language.setdefault(want, {"n": 0, "matched": 0})
        entry["n"] += 1
        entry["matched"] += want == got
    return {"match_rate": matched / scored if scored else None, "n_scored": scored, "per_language": per_language}


def add_extra_metrics(cfg, samples, run) -> None:
    """Fill run.metrics' `regression`, `diversity` and `language` (None where off or not measurable)."""
    run.metrics["regression"] = _regression(cfg, samples, run)
    run.metrics["diversity"] = (diversity_metrics([run.answers[s.index] for s in _in_domain(samples)])
                                if cfg.diversity else None)
    run.metrics["language"] = _language(cfg, samples, run)


def compare_runs(cfg, samples, runs) -> dict | None:
    """Paired A/B comparison of every model against the baseline (honed.eval.compare), per metric."""
    from honed.eval.compare import compare_models

    baseline = cfg.baseline_name()
    by_name = {r.spec.name: r for r in runs}
    if not cfg.comparison.enabled or baseline not in by_name:
        return None
    c = cfg.comparison
    splits = [s.split for s in samples]
    out = {}
    for r in runs:
        if r.spec.name == baseline or r.role == "checkpoint":
            continue
        out[r.spec.name] = compare_models(r.per_sample, by_name[baseline].per_sample, splits, n_resamples=c.n_resamples,
                                          confidence=c.confidence, seed=c.seed, alpha=c.alpha)
    return {"baseline": baseline, "n_resamples": c.n_resamples, "confidence": c.confidence, "alpha": c.alpha,
            "seed": c.seed, "models": out} if out else None
