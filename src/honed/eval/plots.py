"""Report plots as base64 PNG strings (matplotlib, Agg backend), ready for an <img> data URI.

Each function takes parts of report.json and returns None when there is nothing to plot, so the
HTML page can simply leave that figure out.

>>> png = loss_curves({"train": [[1, 2.0], [2, 1.0]], "validation": [[2, 1.5]], "best_step": 2})
>>> png[:8]
'iVBORw0K'
"""

from __future__ import annotations

import base64
import io

COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00")
BAR_METRICS = ("bleu", "chrf", "rougeL", "meteor", "contains_reference", "accuracy", "macro_f1",
               "in_domain_answered", "out_of_domain_refused", "near_domain_refused", "general_accuracy")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # CJK labels render with whatever CJK font exists; without one matplotlib shows boxes, not errors.
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "SimHei"]
    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    _plt().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_curves(fitting: dict | None) -> str | None:
    """Training and validation loss against step in one plot; the best step marked."""
    if not fitting or not fitting.get("train"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    steps, losses = zip(*fitting["train"])
    ax.plot(steps, losses, color=COLORS[0], linewidth=1.2, label="training loss")
    if fitting.get("validation"):
        vsteps, vlosses = zip(*fitting["validation"])
        ax.plot(vsteps, vlosses, "o-", color=COLORS[1], label="validation loss")
    if fitting.get("best_step") is not None:
        ax.axvline(fitting["best_step"], color="#888", linestyle="--", linewidth=1,
                   label=f"best step {fitting['best_step']}")
    if fitting.get("overfitting") and fitting.get("rising_since_step") is not None:
        ax.axvspan(fitting["rising_since_step"], steps[-1], color=COLORS[1], alpha=0.08, label="over-fitting")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def metric_bars(summaries: dict[str, dict[str, float]], labels: dict[str, str]) -> str | None:
    """Grouped bars of the 0-1 quality metrics, one colour per model."""
    keys = [k for k in BAR_METRICS if any(k in s for s in summaries.values())]
    if not keys:
        return None
    plt = _plt()
    names = list(summaries)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(keys) * max(1, len(names)) / 1.6), 3.8))
    width = 0.8 / len(names)
    for m, name in enumerate(names):
        xs = [k + (m - (len(names) - 1) / 2) * width for k in range(len(keys))]
        values = [summaries[name].get(key, 0.0) for key in keys]
        bars = ax.bar(xs, values, width, label=name, color=COLORS[m % len(COLORS)])
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([labels.get(k, k) for k in keys], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (0-1)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(names)))
    return _png(fig)


def confusion_matrix(matrix: list[list[int]], rows: list[str], cols: list[str], title: str) -> str | None:
    """A count heatmap; rows are the truth, columns the prediction."""
    if not matrix or not any(any(r) for r in matrix):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 0.9 + 0.6 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(r) for r in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("expected")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def domain_matrix(domain: dict | None) -> tuple[list[list[int]], list[str], list[str]] | None:
    """Answered/refused counts per split, as a matrix for `confusion_matrix`."""
    if not domain or not domain.get("per_split"):
        return None
    splits = list(domain["per_split"])
    matrix = [[int(domain["per_split"][s]["answered"]), int(domain["per_split"][s]["refused"])] for s in splits]
    return matrix, splits, ["answered", "refused"]


def latency_histogram(latencies: dict[str, list[float]]) -> str | None:
    """Per-request latency distribution of each model, overlaid."""
    latencies = {k: v for k, v in latencies.items() if v}
    if not latencies:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    top = max(max(v) for v in latencies.values())
    bins = [top * i / 20 for i in range(21)] if top > 0 else 10
    for m, (name, values) in enumerate(latencies.items()):
        ax.hist(values, bins=bins, alpha=0.55, label=name, color=COLORS[m % len(COLORS)])
    ax.set_xlabel("seconds per request (its batch's wall time)")
    ax.set_ylabel("requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def learning_curve(points: list[dict] | None, metric: str = "rougeL") -> str | None:
    """Validation loss (left axis) and a quality metric (right axis) across checkpoints."""
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    steps = [p["step"] for p in points]
    if any("loss" in p for p in points):
        ax.plot(steps, [p.get("loss") for p in points], "o-", color=COLORS[1], label="validation loss")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if any(metric in p for p in points):
        right = ax.twinx()
        right.plot(steps, [p.get(metric) for p in points], "s--", color=COLORS[0], label=metric)
        right.set_ylabel(metric)
        right.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def refusal_probability_histogram(by_split: dict[str, list[float]], threshold: float | None, title: str) -> str | None:
    """P(refuse) per domain split, overlaid on 0-1 bins; the calibration's threshold as a dashed line."""
    by_split = {k: v for k, v in by_split.items() if v}
    if not by_split:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    bins = [i / 20 for i in range(21)]
    for m, (split, values) in enumerate(by_split.items()):
        ax.hist(values, bins=bins, alpha=0.55, label=f"{split} ({len(values)})", color=COLORS[m % len(COLORS)])
    if threshold is not None:
        ax.axvline(threshold, color="#333", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(refuse): probability of opening with a refusal")
    ax.set_ylabel("questions")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
