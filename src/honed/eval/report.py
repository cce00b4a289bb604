"""report.json (schema `honed.eval.report`, version 1), predictions.jsonl, and the flat metric
table that the terminal summary, the HTML page and the deltas share.

Every output goes into a temporary folder that replaces `output_dir` in one rename, so a reader
never sees half a report.

>>> flat = flatten_metrics({"loss": {"mean_loss": 1.2, "perplexity": 3.3}, "generation": {"rougeL": 0.4}})
>>> flat["loss"], flat["rougeL"]
(1.2, 0.4)
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from honed.utils.fs import atomic_dir

SCHEMA = "honed.eval.report"
SCHEMA_VERSION = 1

# (key, label, higher is better, how to read it from a model's `metrics`)
METRICS: tuple[tuple[str, str, bool, tuple], ...] = (
    ("loss", "val. loss", False, ("loss", "mean_loss")),
    ("perplexity", "perplexity", False, ("loss", "perplexity")),
    ("bleu", "BLEU", True, ("generation", "bleu")),
    ("chrf", "chrF", True, ("generation", "chrf")),
    ("rouge1", "ROUGE-1", True, ("generation", "rouge1")),
    ("rouge2", "ROUGE-2", True, ("generation", "rouge2")),
    ("rougeL", "ROUGE-L", True, ("generation", "rougeL")),
    ("meteor", "METEOR", True, ("generation", "meteor")),
    ("exact_match", "exact match", True, ("generation", "exact_match")),
    ("contains_reference", "contains ref.", True, ("generation", "contains_reference")),
    ("accuracy", "accuracy", True, ("classification", "accuracy")),
    ("macro_f1", "macro F1", True, ("classification", "macro", "f1")),
    ("auc_roc", "AUC-ROC", True, ("classification", "auc_roc")),
    ("in_domain_answered", "in-domain answered", True, ("domain", "per_split", "in_domain", "answered_rate")),
    ("out_of_domain_refused", "out-of-domain refused", True, ("domain", "per_split", "out_of_domain", "refused_rate")),
    ("near_domain_refused", "near-domain refused", True, ("domain", "per_split", "near_domain", "refused_rate")),
    ("hard_negative_refused", "near-domain in scope refused", False, ("domain", "per_split", "hard_negative", "refused_rate")),
    ("refusal_precision", "refusal precision", True, ("domain", "refusal_precision")),
    ("refusal_recall", "refusal recall", True, ("domain", "refusal_recall")),
    ("false_refusal_rate", "false-refusal rate", False, ("domain", "false_refusal_rate")),
    ("preference_accuracy", "preference accuracy", True, ("preference", "accuracy")),
    ("preference_margin", "preference margin", True, ("preference", "mean_margin")),
    ("decision_agreement", "decision agreement", True, ("stability", "decision_agreement")),
    ("pairwise_rouge_l", "pairwise ROUGE-L", True, ("stability", "mean_pairwise_rouge_l")),
    ("greedy_identical_rate", "greedy identical", True, ("stability", "greedy_identical_rate")),
    ("general_accuracy", "general accuracy", True, ("general", "accuracy")),
    ("general_refusal_rate", "general refused", False, ("general", "refusal_rate")),
    ("judge_relevance", "judge relevance", True, ("judge", "relevance")),
    ("judge_accuracy", "judge accuracy", True, ("judge", "accuracy")),
    ("judge_fluency", "judge fluency", True, ("judge", "fluency")),
    ("mse", "MSE (numeric)", False, ("regression", "mse")),
    ("mae", "MAE (numeric)", False, ("regression", "mae")),
    ("r2", "R² (numeric)", True, ("regression", "r2")),
    ("distinct_1", "distinct-1", True, ("diversity", "distinct_1")),
    ("distinct_2", "distinct-2", True, ("diversity", "distinct_2")),
    ("self_bleu", "self-BLEU", False, ("diversity", "self_bleu")),
    ("language_match", "answer in ref. language", True, ("language", "match_rate")),
    ("latency_p50_s", "latency p50 (s)", False, ("efficiency", "latency_s", "p50")),
    ("latency_p95_s", "latency p95 (s)", False, ("efficiency", "latency_s", "p95")),
    ("tokens_per_s", "tokens/s", True, ("efficiency", "tokens_per_s")),
    ("peak_memory_mb", "peak memory (MB)", False, ("efficiency", "peak_memory_bytes")),
    ("size_mb", "size on disk (MB)", False, ("efficiency", "size_on_disk_bytes")),
)
HIGHER_IS_BETTER = {key: higher for key, _, higher, _ in METRICS}
LABELS = {key: label for key, label, _, _ in METRICS}


def _dig(obj, path):
    for part in path:
        if not isinstance(obj, dict) or obj.get(part) is None:
            return None
        obj = obj[part]
    return obj


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """The headline numbers of one model under flat keys (only those that were measured)."""
    flat = {}
    for key, _, _, path in METRICS:
        value = _dig(metrics, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[key] = value / 2**20 if key.endswith("_mb") else float(value)
    return flat


def deltas(flat: dict[str, dict[str, float]], baseline: str | None) -> dict[str, dict[str, float]]:
    """model − baseline for every metric both have, for every model except the baseline."""
    if baseline is None or baseline not in flat:
        return {}
    base = flat[baseline]
    return {name: {k: v - base[k] for k, v in values.items() if k in base}
            for name, values in flat.items() if name != baseline}


def _clean(obj):
    # JSON has no inf/nan: write null, which the schema documents as "not measurable".
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _learning_curve(runs) -> list[dict] | None:
    points = [r for r in runs if r.spec.step is not None]
    if not points:
        return None
    return [{"step": r.spec.step, "model": r.spec.name, **flatten_metrics(r.metrics)}
            for r in sorted(points, key=lambda r: r.spec.step)]


def build_report(cfg, samples, runs, fitting: dict | None) -> dict:
    """The report.json object (see the README's "report.json" section for every field)."""
    from honed import __version__
    from honed.eval.extras import compare_runs
    from honed.train.outputs import package_versions

    flat = {r.spec.name: flatten_metrics(r.metrics) for r in runs}
    baseline = cfg.baseline_name()
    problems = Counter(p for s in samples for p in s.problems)
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "honed_version": __version__,
        "versions": package_versions(),
        "config": cfg.model_dump(mode="json"),
        "data": {"path": cfg.data.path, "n_samples": len(samples),
                 "n_with_reference": sum(1 for s in samples if s.reference and s.reference.strip()),
                 "splits": dict(Counter(s.split or "none" for s in samples)),
                 "labels": cfg.labels, "problems": dict(problems)},
        "evaluated": runs[0].spec.name,
        "baseline": baseline,
        "models": [{"name": r.spec.name, "role": r.role, "model_path": r.spec.model_path, "adapter": r.spec.adapter,
                    "step": r.spec.step, "metrics": r.metrics, "summary": flat[r.spec.name]} for r in runs],
        "deltas": deltas(flat, baseline),
        "comparison": compare_runs(cfg, samples, runs),
        "fitting": fitting,
        "learning_curve": _learning_curve(runs),
        "general_ability": {r.spec.name: r.general_rows for r in runs if r.general_rows} or None,
        "metric_labels": {k: {"label": LABELS[k], "higher_is_better": HIGHER_IS_BETTER[k]} for k in LABELS},
    }
    return _clean(report)


def prediction_rows(samples, runs) -> list[dict]:
    """One row per sample: prompt, reference, split/label, and per model its answer and scores."""
    rows = []
    for s in samples:
        row = {"index": s.index, "id": s.id, "source": s.source, "prompt": s.prompt_text,
               "system": s.conversation.messages[0].content if s.conversation.messages[0].role == "system" else None,
               "reference": s.reference, "split": s.split, "label": s.label, "models": {}}
        for r in runs:
            entry = {"answer": r.answers[s.index], "latency_s": r.latencies[s.index], **r.per_sample[s.index]}
            if r.judge_rows and s.index < len(r.judge_rows):
                entry["judge"] = r.judge_rows[s.index]
            row["models"][r.spec.name] = entry
        rows.append(_clean(row))
    return rows


def write_outputs(cfg, report: dict, samples, runs) -> Path:
    """report.json, report.html and predictions.jsonl into `cfg.output_dir`, atomically."""
    from honed.eval.html import render_html

    out = Path(cfg.output_dir)
    predictions = prediction_rows(samples, runs)
    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a report folder is meant to be shared
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "predictions.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report, predictions), encoding="utf-8")
    return out
