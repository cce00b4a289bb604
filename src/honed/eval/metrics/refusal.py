"""Does the model stay in its domain: answer in-domain questions, refuse the others?

Each evaluation sample has a split: `in_domain` (should be answered), `out_of_domain` and
`near_domain` (should be refused; near-domain questions sound like the domain but are not).
A `RefusalDetector` decides whether an answer is a refusal — by phrases, regular
expressions, or a callable (a classifier, or the domain gate's own decision).

For the refusal precision/recall/F1 the positive class is "should refuse".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

from honed.data.kinds import SHOULD_REFUSE, SPLITS
from honed.eval.metrics._common import EMPTY_PREDICTION, is_blank
from honed.eval.metrics.classification import binary_auroc

DEFAULT_PHRASES_EN = (
    "I can only help with", "I can only answer", "I can only assist", "I can only discuss",
    "I can't answer", "I cannot answer", "I can not answer", "I can't help with",
    "I cannot help with", "I can't assist", "I cannot assist", "I'm not able to answer",
    "I am not able to answer", "I'm unable to answer", "I am unable to answer",
    "I'm unable to help", "I am unable to help", "outside my scope", "outside the scope of",
    "beyond my scope", "beyond the scope of", "outside my area", "not within my scope",
    "I only answer questions about", "I'm sorry, but I can't", "I am sorry, but I cannot",
)
DEFAULT_PHRASES_ZH = (
    "抱歉", "对不起", "超出了我的范围", "超出我的范围", "超出了我的能力范围", "不在我的范围",
    "不在我的服务范围", "只能回答", "只能提供", "我只能", "无法回答", "不能回答", "无法提供",
    "不便回答", "无法帮助", "无法协助", "恕我无法",
)
DEFAULT_PHRASES = DEFAULT_PHRASES_EN + DEFAULT_PHRASES_ZH

# Curly apostrophes are what chat models usually write in "I can’t".
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'"})


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()


class RefusalDetector:
    """Decides whether an answer refuses.

    Either phrase/pattern based — case-insensitive substrings (`phrases`, default English +
    Chinese lists) and regular expressions (`patterns`) — or a `classifier`: a callable that
    returns a bool (a decision) or a float (a refusal score, a refusal when >= `threshold`).

    >>> RefusalDetector().is_refusal("Sorry — I can’t answer questions about cooking.")
    True
    >>> RefusalDetector(phrases=["not my field"]).is_refusal("That is NOT my field.")
    True
    >>> RefusalDetector(classifier=lambda answer: 0.9).score("anything")
    0.9
    """

    def __init__(self, phrases: Iterable[str] | None = None, patterns: Iterable[str] = (),
                 classifier: Callable[[str], bool | float] | None = None,
                 threshold: float = 0.5):
        if classifier is not None and (phrases is not None or tuple(patterns)):
            raise ValueError("give a RefusalDetector either phrases/patterns or a classifier")
        self.classifier = classifier
        self.threshold = threshold
        self.phrases = tuple(DEFAULT_PHRASES if phrases is None else phrases)
        self._folded = tuple(_fold(phrase) for phrase in self.phrases)
        self.patterns = tuple(re.compile(p, re.IGNORECASE) for p in patterns)

    def score(self, answer: str) -> float | None:
        """The classifier's refusal score; None for phrase matching and bool classifiers."""
        if self.classifier is None:
            return None
        result = self.classifier(answer)
        return None if isinstance(result, bool) else float(result)

    def is_refusal(self, answer: str) -> bool:
        if self.classifier is not None:
            result = self.classifier(answer)
            return result if isinstance(result, bool) else float(result) >= self.threshold
        folded = _fold(answer)
        return (any(phrase in folded for phrase in self._folded)
                or any(pattern.search(answer) for pattern in self.patterns))


@dataclass(frozen=True)
class RefusalOutcome:
    """One sample: its split, whether the answer refused, and its refusal score if any."""

    split: str
    refused: bool | None = None
    score: float | None = None
    error: str | None = None

    @property
    def should_refuse(self) -> bool:
        return self.split in SHOULD_REFUSE


def judge_refusal(answer: str | None, split: str, detector: RefusalDetector | None = None,
                  score: float | None = None) -> RefusalOutcome:
    """Per-sample decision. `score` (a gate's out-of-domain score, say) overrides the
    detector's own; an empty answer is not judged (error "empty prediction").

    >>> judge_refusal("抱歉，这超出了我的范围。", "out_of_domain").refused
    True
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if is_blank(answer):
        return RefusalOutcome(split, error=EMPTY_PREDICTION)
    detector = detector or default_detector()
    if score is None:
        score = detector.score(answer)
    return RefusalOutcome(split, detector.is_refusal(answer), score)


@lru_cache(maxsize=1)
def default_detector() -> RefusalDetector:
    """The shared detector with the default English + Chinese phrases.

    >>> default_detector().is_refusal("我只能回答医学问题。")
    True
    """
    return RefusalDetector()


@dataclass(frozen=True)
class RefusalMetrics:
    """`per_split[split]` has n, answered, refused, answered_rate, refused_rate.
    precision/recall/f1 treat "should refuse" (out/near-domain) as positive; `false_refusal_rate`
    is the share of in-domain answers refused; `auroc` is None without scores for both classes."""

    per_split: dict[str, dict[str, float]]
    precision: float
    recall: float
    f1: float
    false_refusal_rate: float | None
    auroc: float | None
    n_scored: int
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def refusal_metrics(outcomes: Sequence[RefusalOutcome]) -> RefusalMetrics:
    """Aggregate per-sample outcomes; those with an error are skipped and counted.

    >>> outcomes = [judge_refusal(a, s) for a, s in [("HbA1c is ...", "in_domain"),
    ...     ("I can only help with diabetes.", "out_of_domain"), ("Paris.", "near_domain")]]
    >>> m = refusal_metrics(outcomes)
    >>> m.precision, m.recall, m.false_refusal_rate
    (1.0, 0.5, 0.0)
    """
    per_split = {split: {"n": 0, "answered": 0, "refused": 0} for split in SPLITS}
    counts = {"tp": 0, "fp": 0, "fn": 0}
    skipped: list[tuple[int, str]] = []
    scored: list[RefusalOutcome] = []
    for i, outcome in enumerate(outcomes):
        if outcome.error is not None or outcome.refused is None:
            skipped.append((i, outcome.error or "not judged"))
            continue
        scored.append(outcome)
        row = per_split[outcome.split]
        row["n"] += 1
        row["refused" if outcome.refused else "answered"] += 1
        if outcome.refused and outcome.should_refuse:
            counts["tp"] += 1
        elif outcome.refused:
            counts["fp"] += 1
        elif outcome.should_refuse:
            counts["fn"] += 1
    for row in per_split.values():
        row["answered_rate"] = row["answered"] / row["n"] if row["n"] else None
        row["refused_rate"] = row["refused"] / row["n"] if row["n"] else None

    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    with_score = [o for o in scored if o.score is not None]
    auroc = None
    if with_score and len(with_score) == len(scored):
        auroc = binary_auroc([o.should_refuse for o in with_score], [o.score for o in with_score])
    return RefusalMetrics(per_split, precision, recall, f1,
                          per_split["in_domain"]["refused_rate"], auroc, len(scored), skipped)


def evaluate_refusals(answers: Sequence[str | None], splits: Sequence[str],
                      detector: RefusalDetector | None = None,
                      scores: Sequence[float | None] | None = None) -> RefusalMetrics:
    """`judge_refusal` on each sample, then `refusal_metrics`.

    >>> m = evaluate_refusals(["Take metformin.", "抱歉，我只能回答医学问题。"],
    ...                       ["in_domain", "out_of_domain"], scores=[0.1, 0.8])
    >>> m.f1, m.auroc
    (1.0, 1.0)
    """
    if len(answers) != len(splits) or (scores is not None and len(scores) != len(answers)):
        raise ValueError("answers, splits (and scores) must have one entry per sample")
    scores = scores if scores is not None else [None] * len(answers)
    return refusal_metrics([judge_refusal(a, s, detector, sc)
                            for a, s, sc in zip(answers, splits, scores)])
