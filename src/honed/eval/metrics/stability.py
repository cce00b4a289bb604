"""Stability: does the model say the same thing when asked the same prompt N times?

For N sampled answers of one prompt: how often the refuse/answer decision agrees (the share
of the majority decision), how alike the answers are (mean pairwise ROUGE-L F1, Chinese-aware),
and — for greedy decoding, which must be deterministic — whether all runs are identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

from honed.eval.metrics._common import EMPTY_PREDICTION, AggregateResult, is_blank
from honed.eval.metrics.refusal import RefusalDetector, default_detector
from honed.eval.metrics.text import rouge


@dataclass(frozen=True)
class StabilityResult:
    """One prompt. `decision_agreement` is the share of answers that took the majority
    decision (1.0 = all agree, 0.5 = an even split of two); `majority` is "refuse", "answer",
    or None on a tie. `mean_pairwise_rouge_l` is None with fewer than two answers."""

    n_answers: int
    decision_agreement: float | None
    majority: str | None
    refusal_rate: float | None
    mean_pairwise_rouge_l: float | None
    all_identical: bool
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def all_identical(answers: Sequence[str | None]) -> bool:
    """True when every answer is the same string — what greedy decoding must give.

    Exact comparison on purpose: a greedy run that differs by one space is a bug to find.

    >>> all_identical(["42", "42", "42"]), all_identical(["42", "42 "])
    (True, False)
    """
    return len(set(answers)) <= 1


def answer_stability(answers: Sequence[str | None],
                     detector: RefusalDetector | None = None) -> StabilityResult:
    """Stability of N answers to one prompt; empty answers are skipped and counted
    (`all_identical` still looks at every answer, empty ones included).

    >>> r = answer_stability(["The dose is 5 mg.", "The dose is 5 mg daily.", "抱歉，无法回答。"])
    >>> round(r.decision_agreement, 3), r.majority, round(r.mean_pairwise_rouge_l, 3)
    (0.667, 'answer', 0.303)
    """
    detector = detector or default_detector()
    skipped = [(i, EMPTY_PREDICTION) for i, answer in enumerate(answers) if is_blank(answer)]
    kept = [answer for answer in answers if not is_blank(answer)]
    identical = all_identical(answers)
    if not kept:
        return StabilityResult(0, None, None, None, None, identical, skipped)

    n_refused = sum(detector.is_refusal(answer) for answer in kept)
    n_answered = len(kept) - n_refused
    agreement = max(n_refused, n_answered) / len(kept)
    majority = None if n_refused == n_answered else ("refuse" if n_refused > n_answered
                                                     else "answer")
    pair_scores = [rouge(a, b).scores["rougeL"] for a, b in combinations(kept, 2)]
    mean_rouge = sum(pair_scores) / len(pair_scores) if pair_scores else None
    return StabilityResult(len(kept), agreement, majority, n_refused / len(kept), mean_rouge,
                           identical, skipped)


def aggregate_stability(results: Sequence[StabilityResult]) -> AggregateResult:
    """Means over prompts: decision agreement, pairwise ROUGE-L, share of prompts whose runs
    were all identical. Prompts with no scorable answer are skipped and counted.

    >>> r = aggregate_stability([answer_stability(["a b", "a b"]), answer_stability(["", ""])])
    >>> r.scores["decision_agreement"], r.scores["identical_rate"], r.n_skipped
    (1.0, 1.0, 1)
    """
    scored = [(i, r) for i, r in enumerate(results) if r.n_answers > 0]
    skipped = [(i, "no answers") for i, r in enumerate(results) if r.n_answers == 0]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    scores = {
        "decision_agreement": mean(r.decision_agreement for _, r in scored),
        "mean_pairwise_rouge_l": mean(r.mean_pairwise_rouge_l for _, r in scored),
        "identical_rate": mean(float(r.all_identical) for _, r in scored),
    }
    scores = {name: value for name, value in scores.items() if value is not None}
    return AggregateResult(scores, n_scored=len(scored), skipped=skipped)
