"""Classification metrics for answers that should be one of a fixed set of labels.

Accuracy, per-class and macro precision/recall/F1, the confusion matrix and AUC-ROC are
computed by scikit-learn (`labels=` given, `zero_division=0`; AUC one-vs-rest, macro over the
labels that have both classes, for more than two labels); this module maps answers to labels and
counts what cannot be scored.

A prediction outside the label set (the model answered "Maybe" to a yes/no question) is not an
error of the evaluation: it counts as wrong, is left out of the confusion matrix, and is listed
in `invalid` with its index. Empty predictions and missing references are skipped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from honed.eval.metrics._common import check_lengths, pair_error
from honed.eval.metrics.language import normalize_answer


@dataclass(frozen=True)
class ClassificationResult:
    """Metrics over the scored samples; `confusion_matrix[i][j]` counts reference `labels[i]`
    predicted as `labels[j]`. `per_class[label]` has precision, recall, f1 and support."""

    labels: list[str]
    accuracy: float | None
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    confusion_matrix: list[list[int]]
    invalid: list[tuple[int, str]] = field(default_factory=list)
    n_scored: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_invalid(self) -> int:
        return len(self.invalid)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _label_index(labels: Sequence[str], normalize: bool) -> dict[str, str]:
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    index: dict[str, str] = {}
    for label in labels:
        key = normalize_answer(label) if normalize else label
        if key in index:
            raise ValueError(f"labels {index[key]!r} and {label!r} are the same after "
                             "normalisation; rename one or pass normalize=False")
        index[key] = label
    return index


def match_label(prediction: str, labels: Sequence[str], normalize: bool = True) -> str | None:
    """The label `prediction` names, or None when it names none of them.

    With `normalize` (default) case, punctuation, whitespace and full-width forms are ignored.

    >>> match_label(" Positive. ", ["positive", "negative"])
    'positive'
    >>> match_label("maybe", ["yes", "no"]) is None
    True
    """
    key = normalize_answer(prediction) if normalize else prediction
    return _label_index(labels, normalize).get(key)


def _safe_div(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def classification_metrics(predictions: Sequence[str | None], references: Sequence[str | None],
                           labels: Sequence[str], normalize: bool = True) -> ClassificationResult:
    """Accuracy, per-class and macro precision/recall/F1 and the confusion matrix.

    `labels` fixes the order of rows/columns and which answers are valid. A reference outside
    `labels` is a data error and raises ValueError; a prediction outside them goes to `invalid`.

    >>> r = classification_metrics(["yes", "no", "Maybe", "yes"], ["yes", "yes", "no", "no"],
    ...                            labels=["yes", "no"])
    >>> r.accuracy, r.confusion_matrix, r.invalid
    (0.25, [[1, 1], [1, 0]], [(2, 'Maybe')])
    """
    check_lengths(predictions, references)
    index = _label_index(labels, normalize)
    position = {label: k for k, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    invalid: list[tuple[int, str]] = []
    skipped: list[tuple[int, str]] = []
    truth: list[str] = []
    guesses: list[str | None] = []
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        error = pair_error(prediction, reference)
        if error:
            skipped.append((i, error))
            continue
        true = index.get(normalize_answer(reference) if normalize else reference)
        if true is None:
            raise ValueError(f"reference {i} is {reference!r}, which is not one of the labels "
                             f"{list(labels)}; fix the data or add it to the labels")
        predicted = index.get(normalize_answer(prediction) if normalize else prediction)
        if predicted is None:
            invalid.append((i, prediction))
        truth.append(true)
        guesses.append(predicted)

    n_scored = len(truth)
    per_class: dict[str, dict[str, float]] = {label: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for label in labels}
    accuracy = None
    if n_scored:
        from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

        # Labels as their positions; an answer outside the labels is -1, which no label equals: it
        # stays in recall's denominator (wrong) and out of the confusion matrix (sklearn's `labels=`).
        truth_ = [position[t] for t in truth]
        guess_ = [position[p] if p is not None else -1 for p in guesses]
        ks = list(range(len(labels)))
        matrix = confusion_matrix(truth_, guess_, labels=ks)
        precision, recall, f1, counts = precision_recall_fscore_support(truth_, guess_, labels=ks, zero_division=0)
        for k, label in enumerate(labels):
            per_class[label] = {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                                "support": int(counts[k])}
        accuracy = float(accuracy_score(truth_, guess_))
    macro = {name: float(np.mean([per_class[label][name] for label in labels]))
             for name in ("precision", "recall", "f1")}
    return ClassificationResult(list(labels), accuracy, per_class, macro, np.asarray(matrix).tolist(),
                                invalid, n_scored, skipped)


def binary_auroc(positives: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count one half). None when only one class is present.

    >>> binary_auroc([True, False, True, False], [0.9, 0.1, 0.4, 0.4])
    0.875
    """
    positive = np.asarray(positives, dtype=bool)
    if positive.all() or not positive.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def softmax(rows: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large log-likelihoods.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class AucResult:
    """`auc_roc`: binary AUC (positive = labels[1]) or one-vs-rest macro AUC; `per_class`
    holds each label's one-vs-rest AUC (None where the label has no positive or no negative
    sample: those are left out of the macro mean)."""

    auc_roc: float | None
    per_class: dict[str, float | None]
    n_scored: int
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _score_row(row, labels: Sequence[str]) -> list[float] | None:
    if row is None:
        return None
    if isinstance(row, Mapping):
        if any(label not in row for label in labels):
            return None
        row = [row[label] for label in labels]
    values = [float(value) for value in row]
    if len(values) != len(labels) or any(math.isnan(v) for v in values):
        return None
    return values


def auc_roc(scores: Sequence[Sequence[float] | Mapping[str, float] | None],
            references: Sequence[str | None], labels: Sequence[str],
            scores_are: Literal["logits", "probabilities"] = "logits") -> AucResult:
    """AUC-ROC from per-label scores of each sample (a row in `labels` order, or a dict).

    `scores_are="logits"` (log-likelihoods of each label's answer, for instance) turns each row
    into probabilities by softmax first; "probabilities" uses them as given. Samples without a
    reference or with a missing/NaN/short score row are skipped and counted.

    >>> r = auc_roc([[-0.1, -2.0], [-3.0, -0.2], [-0.5, -0.9]], ["yes", "no", "no"], ["yes", "no"])
    >>> r.auc_roc
    1.0
    """
    if len(scores) != len(references):
        raise ValueError(f"got {len(scores)} score rows but {len(references)} references")
    if len(labels) < 2:
        raise ValueError(f"AUC-ROC needs at least two labels, got {list(labels)}")
    position = {label: k for k, label in enumerate(labels)}
    rows, truth, skipped = [], [], []
    for i, (row, reference) in enumerate(zip(scores, references)):
        values = _score_row(row, labels)
        if reference is None or reference not in position:
            skipped.append((i, "missing reference" if reference is None
                            else f"reference {reference!r} is not a label"))
        elif values is None:
            skipped.append((i, "missing or malformed scores"))
        else:
            rows.append(values)
            truth.append(position[reference])
    if not rows:
        return AucResult(None, {label: None for label in labels}, 0, skipped)
    matrix = np.asarray(rows, dtype=np.float64)
    probabilities = softmax(matrix) if scores_are == "logits" else matrix
    truth_array = np.asarray(truth)
    per_class = {label: binary_auroc(truth_array == k, probabilities[:, k])
                 for k, label in enumerate(labels)}
    if len(labels) == 2:
        value = per_class[labels[1]]
    else:
        defined = [v for v in per_class.values() if v is not None]
        value = float(np.mean(defined)) if defined else None
    return AucResult(value, per_class, len(rows), skipped)
