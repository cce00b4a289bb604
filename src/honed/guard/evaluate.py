"""How well a gate separates in-domain from out-of-domain questions it never saw.

AUROC and the ROC curve come from scikit-learn. A bilingual (`auto`) gate has one threshold per
script, so its overall numbers use each question's margin over its own route's threshold; the
per-route rows use the raw scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from honed.errors import DataError
from honed.utils.fs import save_figure_atomic


@dataclass
class SplitMetrics:
    name: str
    n_in: int
    n_out: int
    auroc: float | None
    fpr_at_95: float | None  # share of out-of-domain passed when 95% of in-domain pass
    threshold_at_95: float | None  # the score threshold that reaches 95% TPR
    tpr: float  # at the gate's own threshold(s)
    fpr: float
    gate_threshold: float | None = None


@dataclass
class EvalReport:
    rows: list[SplitMetrics] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def roc_metrics(name: str, in_scores, out_scores, gate_threshold: float, gate_threshold_label: float | None = None) -> SplitMetrics:
    """AUROC, FPR at 95% TPR and its threshold (sklearn's ROC), and TPR/FPR at the gate's threshold."""
    from sklearn.metrics import roc_auc_score, roc_curve

    in_scores, out_scores = np.asarray(in_scores, float), np.asarray(out_scores, float)
    tpr_gate = float(np.mean(in_scores >= gate_threshold)) if len(in_scores) else float("nan")
    fpr_gate = float(np.mean(out_scores >= gate_threshold)) if len(out_scores) else float("nan")
    if not len(in_scores) or not len(out_scores):
        return SplitMetrics(name, len(in_scores), len(out_scores), None, None, None, tpr_gate, fpr_gate, gate_threshold_label)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    at = int(np.argmax(tpr >= 0.95))
    return SplitMetrics(name, len(in_scores), len(out_scores), float(roc_auc_score(labels, scores)), float(fpr[at]), float(thresholds[at]),
                        tpr_gate, fpr_gate, gate_threshold_label)


def evaluate_gate(gate, in_domain: list[str], out_of_domain: list[str], plots_dir: str | Path | None = None) -> EvalReport:
    """Score both sets with `gate`; one row overall and one per route; a histogram PNG per split."""
    if not in_domain or not out_of_domain:
        raise DataError(f"guard eval needs both in-domain and out-of-domain questions (got {len(in_domain)} and {len(out_of_domain)})")
    d_in, d_out = gate.check_many(in_domain), gate.check_many(out_of_domain)
    report = EvalReport()
    single = len(gate.parts) == 1
    margin = (lambda d: d.score) if single else (lambda d: d.score - d.threshold)
    overall_threshold = next(iter(gate.parts.values())).threshold if single else 0.0
    report.rows.append(roc_metrics("all", [margin(d) for d in d_in], [margin(d) for d in d_out], overall_threshold, overall_threshold if single else None))
    if not single:
        for route, part in gate.parts.items():
            report.rows.append(roc_metrics(route, [d.score for d in d_in if d.route == route], [d.score for d in d_out if d.route == route], part.threshold, part.threshold))
    if plots_dir is not None:
        label = "score" if single else "score − its route's threshold"
        for split, decisions in (("in-domain", d_in), ("out-of-domain", d_out)):
            report.plots.append(plot_histogram([margin(d) for d in decisions], overall_threshold, Path(plots_dir) / f"scores-{split}.png", f"{split} questions ({len(decisions)})", label))
    return report


def plot_histogram(scores, threshold: float, path: Path, title: str, xlabel: str) -> Path:
    """A histogram of `scores` with the threshold drawn in, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=30, color="#4c72b0", alpha=0.85)
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("questions")
    ax.legend()
    return save_figure_atomic(fig, path)
