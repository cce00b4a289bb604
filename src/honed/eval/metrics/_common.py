"""Result types shared by every metric, the empty-input check, and lazy optional imports.

Per-sample functions never raise on bad model output: they return a `SampleResult` whose
`error` says why the sample could not be scored. Aggregates skip those samples and count them,
so a report can say "412 scored, 3 skipped (empty prediction)" instead of crashing at item 380.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

EMPTY_PREDICTION = "empty prediction"
MISSING_REFERENCE = "missing reference"

# module name → what to pip install; every optional dependency of the metrics is listed here.
_PIP_NAMES = {
    "sacrebleu": "sacrebleu>=2.4",
    "rouge_score": "rouge-score>=0.1.2",
    "jieba": "jieba>=0.42",
    "nltk": "nltk>=3.8",
}


def require(module: str) -> Any:
    """Import an optional dependency, or fail with the pip command that installs it.

    >>> require("math").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = _PIP_NAMES.get(module.split(".")[0], module)
        raise ImportError(
            f"honed.eval needs the package '{pip_name}' for this metric; "
            f"install it with: pip install '{pip_name}'"
        ) from exc


@dataclass(frozen=True)
class SampleResult:
    """Scores of one sample (`scores`), or why it has none (`error`).

    >>> SampleResult({"bleu": 41.2}).ok
    True
    >>> SampleResult(error="empty prediction").ok
    False
    """

    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class AggregateResult:
    """Scores over a set of samples plus the samples that were skipped and why.

    `skipped` holds (index, error) pairs; `n_skipped` is their count, `n_scored` the rest.

    >>> r = AggregateResult({"bleu": 30.0}, n_scored=2, skipped=[(1, "empty prediction")])
    >>> r.n_skipped, r.skipped_by_reason()
    (1, {'empty prediction': 1})
    """

    scores: dict[str, float]
    n_scored: int
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))


def is_blank(text: str | None) -> bool:
    """True for None and for strings that hold only whitespace.

    >>> is_blank("  \\n"), is_blank(None), is_blank("a")
    (True, True, False)
    """
    return text is None or not str(text).strip()


def pair_error(prediction: str | None, reference: str | None) -> str | None:
    """Why a (prediction, reference) pair cannot be scored, or None when it can.

    >>> pair_error("", "Paris"), pair_error("Paris", None), pair_error("Paris", "Paris")
    ('empty prediction', 'missing reference', None)
    """
    if is_blank(reference):
        return MISSING_REFERENCE
    if is_blank(prediction):
        return EMPTY_PREDICTION
    return None


def check_lengths(predictions: Sequence, references: Sequence) -> None:
    """Raise a ValueError that says both lengths when the two lists do not pair up.

    >>> check_lengths(["a"], ["a"])
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; "
            "pass one reference per prediction (use None where a reference is missing)"
        )


def valid_pairs(
    predictions: Sequence[str | None], references: Sequence[str | None]
) -> tuple[list[int], list[tuple[int, str]]]:
    """Indices of scorable pairs and (index, error) of the others; lengths must agree.

    >>> valid_pairs(["a", "", "c"], ["a", "b", None])
    ([0], [(1, 'empty prediction'), (2, 'missing reference')])
    """
    check_lengths(predictions, references)
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        error = pair_error(prediction, reference)
        if error is None:
            kept.append(i)
        else:
            skipped.append((i, error))
    return kept, skipped


def aggregate(results: Sequence[SampleResult]) -> AggregateResult:
    """Mean of every score over the samples that have one; failed samples are counted.

    A runner scores each sample with a per-sample function, keeps the results for the
    per-sample table of the report, and calls this once for the summary.

    >>> r = aggregate([SampleResult({"em": 1.0}), SampleResult({"em": 0.0}),
    ...                SampleResult(error="empty prediction")])
    >>> r.scores, r.n_scored, r.n_skipped
    ({'em': 0.5}, 2, 1)
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped: list[tuple[int, str]] = []
    for i, result in enumerate(results):
        if not result.ok:
            skipped.append((i, str(result.error)))
            continue
        for name, value in result.scores.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            sums[name] = sums.get(name, 0.0) + float(value)
            counts[name] = counts.get(name, 0) + 1
    scores = {name: sums[name] / counts[name] for name in sums}
    return AggregateResult(scores, n_scored=len(results) - len(skipped), skipped=skipped)
