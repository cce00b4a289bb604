"""Answer stability over N samples of one prompt."""

import itertools

import pytest
from rouge_score import rouge_scorer

from honed.eval.metrics import (
    RefusalDetector,
    aggregate_stability,
    all_identical,
    answer_stability,
)


def test_agreement_majority_and_english_pairwise_rouge_l():
    answers = ["The dose is 5 mg daily.", "The usual dose is 5 mg.",
               "Take 5 mg each day.", "I can only help with diabetes questions."]
    result = answer_stability(answers)
    assert result.decision_agreement == 0.75 and result.majority == "answer"
    assert result.refusal_rate == 0.25
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(itertools.combinations(answers, 2))
    expected = sum(scorer.score(a, b)["rougeL"].fmeasure for a, b in pairs) / len(pairs)
    assert result.mean_pairwise_rouge_l == pytest.approx(expected)
    assert not result.all_identical


def test_chinese_pairwise_rouge_l_is_segmented():
    # By hand: [我, 喜欢, 苹果] vs [我, 喜欢, 吃, 苹果]: LCS 3 → F = 2·3 / (3 + 4) = 6/7. Unsegmented,
    # each answer would be one "word" and score 0.
    result = answer_stability(["我喜欢苹果", "我喜欢吃苹果"])
    assert result.mean_pairwise_rouge_l == pytest.approx(6 / 7)


def test_tie_has_no_majority():
    result = answer_stability(["Yes, 5 mg.", "抱歉，无法回答。"])
    assert result.decision_agreement == 0.5 and result.majority is None


def test_custom_detector_is_used():
    detector = RefusalDetector(classifier=lambda answer: answer.startswith("No"))
    result = answer_stability(["No.", "No way.", "Yes."], detector)
    assert result.majority == "refuse" and result.decision_agreement == pytest.approx(2 / 3)


def test_greedy_runs_identical_check():
    assert all_identical(["same answer"] * 4)
    assert not all_identical(["same answer", "same answer", "same  answer"])
    assert answer_stability(["a b c"] * 3).all_identical
    assert answer_stability(["a b c"] * 3).mean_pairwise_rouge_l == 1.0


def test_empty_answers_skipped_and_aggregate():
    one = answer_stability(["a b", "", "a b"])
    assert one.n_answers == 2 and one.skipped == [(1, "empty prediction")]
    assert not one.all_identical  # the empty run differs: greedy decoding was not stable
    none = answer_stability(["", None])
    assert none.n_answers == 0 and none.decision_agreement is None
    single = answer_stability(["only one"])
    assert single.mean_pairwise_rouge_l is None and single.decision_agreement == 1.0
    summary = aggregate_stability([one, none, answer_stability(["x y", "抱歉"])])
    assert summary.n_scored == 2 and summary.skipped == [(1, "no answers")]
    assert summary.scores["decision_agreement"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary.scores["identical_rate"] == 0.0
