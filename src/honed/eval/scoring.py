"""Score one model's answers: per-sample scores for predictions.jsonl, aggregates for the report.

Which metrics run is decided by the data: generation metrics where references exist, domain
behaviour where samples carry a split, classification where a label set is configured. Problems
with a sample (missing reference, empty answer, a label outside the set) go into that sample's
`errors` and the aggregate's `skipped` counts; they never stop the evaluation.

>>> from honed.eval.samples import EvalSample
>>> from honed.data.conversation import Conversation, Message
>>> s = EvalSample(0, "a", "x:1", Conversation([Message("user", "Capital of France?")]), "Paris")
>>> r = score_model([s], ["Paris."], Scorer())
>>> r.per_sample[0]["exact_match"], r.generation["exact_match"]
(1.0, 1.0)
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

from honed.data.kinds import SHOULD_ANSWER
from honed.errors import ConfigError
from honed.eval.config import RefusalConfig
from honed.eval.metrics import (
    RefusalDetector,
    RefusalOutcome,
    auc_roc,
    classification_metrics,
    contains_reference,
    corpus_bleu,
    corpus_chrf,
    exact_match,
    judge_refusal,
    match_label,
    meteor,
    refusal_metrics,
    rouge,
    sentence_bleu,
    sentence_chrf,
)
from honed.eval.metrics.meteor import SynonymTable, default_synonyms

# rouge-score logs through absl at INFO on every scorer it builds; that is noise on a terminal.
logging.getLogger("absl").setLevel(logging.WARNING)

# Aggregates shown first and plotted as bars: all on a 0-1 scale (BLEU/chrF divided by 100).
HEADLINE = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "meteor", "exact_match", "contains_reference")


def build_detector(cfg: RefusalConfig) -> RefusalDetector:
    """The refusal detector the config asks for: phrases/patterns, or a `module:function` classifier.

    >>> build_detector(RefusalConfig(phrases=["not my field"])).is_refusal("Not my field, sorry")
    True
    """
    if cfg.classifier:
        module_name, _, attr = cfg.classifier.partition(":")
        try:
            classifier = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"refusal.classifier={cfg.classifier!r}: cannot import it ({err}); "
                              "give 'package.module:function' importable from this environment") from None
        return RefusalDetector(classifier=classifier, threshold=cfg.threshold)
    return RefusalDetector(phrases=cfg.phrases, patterns=cfg.patterns)


def gate_outcome(split: str, decision, threshold: float) -> RefusalOutcome | None:
    """A gate's recorded decision as an outcome: bool, "refuse"/"answer", or a refusal score.

    >>> gate_outcome("out_of_domain", "refuse", 0.5).refused, gate_outcome("in_domain", 0.2, 0.5).refused
    (True, False)
    """
    if decision is None:
        return None
    if isinstance(decision, bool):
        return RefusalOutcome(split, decision)
    if isinstance(decision, (int, float)):
        return RefusalOutcome(split, float(decision) >= threshold, float(decision))
    word = str(decision).strip().lower()
    if word in ("refuse", "refused", "reject", "block", "true", "yes"):
        return RefusalOutcome(split, True)
    if word in ("answer", "answered", "accept", "allow", "pass", "false", "no"):
        return RefusalOutcome(split, False)
    return RefusalOutcome(split, error=f"gate decision {decision!r} is not a bool, a score or refuse/answer")


@dataclass
class Scorer:
    """What to score with; built once per evaluation from the config."""

    detector: RefusalDetector = field(default_factory=RefusalDetector)
    labels: list[str] | None = None
    synonyms: SynonymTable = field(default_factory=default_synonyms)
    gate_threshold: float = 0.5


@dataclass
class ModelScores:
    per_sample: list[dict]
    generation: dict = field(default_factory=dict)
    generation_counts: dict = field(default_factory=dict)
    domain: dict | None = None
    classification: dict | None = None


def _pair_scores(prediction: str, reference: str | None, synonyms: SynonymTable) -> tuple[dict, str | None]:
    scores: dict[str, float] = {}
    error = None
    for result in (sentence_bleu(prediction, reference), sentence_chrf(prediction, reference),
                   rouge(prediction, reference), meteor(prediction, reference, synonyms, use_default_synonyms=False),
                   exact_match(prediction, reference), contains_reference(prediction, reference)):
        if result.ok:
            scores.update(result.scores)
            for name in ("bleu", "chrf"):  # sacrebleu's 0-100 → 0-1, the scale of every other score
                if name in result.scores:
                    scores[name] = result.scores[name] / 100.0
        else:
            error = result.error
    return scores, error


def _generation_aggregate(samples, predictions, per_sample) -> tuple[dict, dict]:
    # Out-/near-domain references are refusal wordings, so they are judged by domain behaviour,
    # not by n-gram overlap with one particular refusal sentence.
    chosen = [s.index for s in samples if s.split is None or s.split in SHOULD_ANSWER]
    refs = [samples[i].reference for i in chosen]
    preds = [predictions[i] for i in chosen]
    if not any(r and r.strip() for r in refs):
        return {}, {}
    bleu, chrf = corpus_bleu(preds, refs), corpus_chrf(preds, refs)
    out = {}
    if bleu.n_scored:
        out["bleu"] = bleu.scores["bleu"] / 100.0
        out["chrf"] = chrf.scores["chrf"] / 100.0
    for name in HEADLINE[2:]:
        values = [per_sample[i][name] for i in chosen if name in per_sample[i]]
        if values:
            out[name] = sum(values) / len(values)
    counts = {"n": len(chosen), "n_scored": bleu.n_scored, "skipped": bleu.skipped_by_reason()}
    return out, counts


def _domain(samples, predictions, scorer: Scorer, per_sample, refusal_scores=None) -> dict | None:
    if not any(s.split for s in samples):
        return None
    outcomes = []
    for s, answer in zip(samples, predictions):
        if s.split is None:
            outcomes.append(RefusalOutcome("in_domain", error="no split"))
            continue
        p_refuse = refusal_scores[s.index] if refusal_scores is not None else None
        outcome = gate_outcome(s.split, s.gate_decision, scorer.gate_threshold)
        if outcome is not None and p_refuse is not None:  # a gate's decision; the AUROC stays P(refuse)'s
            outcome = dataclasses.replace(outcome, score=p_refuse)
        if outcome is None:
            outcome = judge_refusal(answer, s.split, scorer.detector, p_refuse)
        outcomes.append(outcome)
        if outcome.refused is not None:
            per_sample[s.index]["refused"] = outcome.refused
    m = refusal_metrics(outcomes)
    return {"per_split": {k: v for k, v in m.per_split.items() if v["n"]}, "refusal_precision": m.precision,
            "refusal_recall": m.recall, "refusal_f1": m.f1, "false_refusal_rate": m.false_refusal_rate,
            "auroc": m.auroc, "n_scored": m.n_scored,
            "skipped": sum(1 for _, why in m.skipped if why != "no split")}


def _classification(samples, predictions, scorer: Scorer, per_sample, label_scores) -> dict:
    labels = scorer.labels
    preds, refs, rows = [], [], []
    for s, answer in zip(samples, predictions):
        gold = s.label if s.label is not None else s.reference
        if gold is not None and match_label(gold, labels) is None:
            per_sample[s.index]["errors"].append(f"reference label {gold!r} is not one of {labels}")
            gold = None  # reported on the sample; left out of the metrics
        gold = match_label(gold, labels) if gold is not None else None
        predicted = match_label(answer, labels) if answer and answer.strip() else None
        per_sample[s.index]["predicted_label"] = predicted
        if answer and answer.strip() and predicted is None and gold is not None:
            per_sample[s.index]["errors"].append(f"answer {answer[:40]!r} is not one of the labels")
        preds.append(answer)
        refs.append(gold)
        rows.append(label_scores[s.index] if label_scores else None)
    result = classification_metrics(preds, refs, labels)
    out = {"labels": labels, "accuracy": result.accuracy, "macro": result.macro, "per_class": result.per_class,
           "confusion_matrix": result.confusion_matrix, "n_scored": result.n_scored,
           "n_invalid": result.n_invalid, "n_skipped": result.n_skipped, "auc_roc": None}
    if label_scores:
        auc = auc_roc(rows, refs, labels)
        out["auc_roc"], out["auc_per_class"] = auc.auc_roc, auc.per_class
    return out


def score_model(samples: Sequence, predictions: Sequence[str], scorer: Scorer,
                label_scores: Sequence[dict | None] | None = None,
                refusal_scores: Sequence[float | None] | None = None) -> ModelScores:
    """Per-sample and aggregate scores of one model's `predictions` (one per sample). `refusal_scores`
    (the model's P(refuse) per sample, with a refusal calibration) are the scores of the domain AUROC."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    per_sample = []
    for s, answer in zip(samples, predictions):
        row: dict = {"errors": list(s.problems)}
        if s.reference is not None and s.reference.strip():
            scores, error = _pair_scores(answer, s.reference, scorer.synonyms)
            row.update(scores)
            if error and error not in row["errors"]:
                row["errors"].append(error)
        elif not (answer or "").strip():
            row["errors"].append("empty prediction")
        per_sample.append(row)
    generation, counts = _generation_aggregate(samples, predictions, per_sample)
    result = ModelScores(per_sample, generation, counts, _domain(samples, predictions, scorer, per_sample, refusal_scores))
    if scorer.labels:
        result.classification = _classification(samples, predictions, scorer, per_sample, label_scores)
    return result
