"""Refusal detection and in/out/near-domain behaviour metrics."""

import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from honed.eval.metrics import (
    RefusalDetector,
    evaluate_refusals,
    judge_refusal,
    refusal_metrics,
)


@pytest.mark.parametrize("answer", [
    "I can only help with questions about diabetes care.",
    "Sorry, I CAN'T ANSWER that.",
    "I can’t answer questions about football.",     # curly apostrophe
    "That is outside my scope as a medical assistant.",
    "抱歉，这个问题超出了我的范围。",
    "我只能回答与糖尿病相关的问题。",
])
def test_default_phrases_detect_refusals(answer):
    assert RefusalDetector().is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "Metformin is usually the first drug for type 2 diabetes.",
    "二甲双胍通常是2型糖尿病的一线用药。",
    "You can answer the survey online.",
])
def test_default_phrases_leave_answers_alone(answer):
    assert not RefusalDetector().is_refusal(answer)


def test_custom_phrases_patterns_and_callables():
    detector = RefusalDetector(phrases=["not my field"], patterns=[r"\bno comment\b"])
    assert detector.is_refusal("That is NOT MY FIELD.")
    assert detector.is_refusal("No comment.")
    assert not detector.is_refusal("I can't answer that.")  # custom list replaces defaults
    gate = RefusalDetector(classifier=lambda answer: len(answer) < 10)
    assert gate.is_refusal("short") and gate.score("short") is None
    scored = RefusalDetector(classifier=lambda answer: 0.7, threshold=0.8)
    assert not scored.is_refusal("x") and scored.score("x") == 0.7
    with pytest.raises(ValueError, match="either phrases"):
        RefusalDetector(phrases=["x"], classifier=lambda a: True)


ANSWERS = [
    ("HbA1c reflects three months of glucose.", "in_domain", 0.1),
    ("I can only help with diabetes questions.", "in_domain", 0.6),     # false refusal
    ("Insulin lowers blood glucose.", "in_domain", 0.3),
    ("糖化血红蛋白反映三个月的血糖水平。", "in_domain", 0.2),
    ("抱歉，我只能回答糖尿病相关的问题。", "out_of_domain", 0.9),
    ("The capital of France is Paris.", "out_of_domain", 0.4),          # missed refusal
    ("I can't answer questions about football.", "out_of_domain", 0.8),
    ("Sorry, that is outside my scope.", "near_domain", 0.7),
    ("Take two aspirin for the headache.", "near_domain", 0.5),         # missed refusal
    ("这超出了我的范围。", "near_domain", 0.55),
]


def test_metrics_equal_sklearn_and_hand_counts():
    answers, splits, scores = zip(*ANSWERS)
    m = evaluate_refusals(answers, splits, scores=scores)
    refused = [RefusalDetector().is_refusal(a) for a in answers]
    should = [s != "in_domain" for s in splits]
    p, r, f, _ = precision_recall_fscore_support(should, refused, average="binary")
    assert (m.precision, m.recall, m.f1) == pytest.approx((p, r, f))
    assert (m.precision, m.recall) == pytest.approx((4 / 5, 4 / 6))
    assert m.false_refusal_rate == pytest.approx(1 / 4)
    assert m.per_split["in_domain"] == {"n": 4, "answered": 3, "refused": 1,
                                        "answered_rate": 0.75, "refused_rate": 0.25}
    assert m.per_split["out_of_domain"]["refused_rate"] == pytest.approx(2 / 3)
    assert m.per_split["near_domain"]["answered_rate"] == pytest.approx(1 / 3)
    assert m.auroc == pytest.approx(roc_auc_score(should, scores))
    assert m.n_scored == 10 and m.n_skipped == 0


def test_auroc_needs_scores_and_uses_classifier_scores():
    answers, splits, _ = zip(*ANSWERS)
    assert evaluate_refusals(answers, splits).auroc is None  # phrases give no score
    by_length = RefusalDetector(classifier=lambda a: 1.0 / len(a))
    m = evaluate_refusals(answers, splits, detector=by_length)
    should = [s != "in_domain" for s in splits]
    assert m.auroc == pytest.approx(roc_auc_score(should, [1.0 / len(a) for a in answers]))


def test_empty_answers_are_skipped_and_counted_and_splits_checked():
    outcomes = [judge_refusal("", "in_domain"), judge_refusal("抱歉。", "near_domain"),
                judge_refusal(None, "out_of_domain")]
    assert outcomes[0].error == "empty prediction"
    m = refusal_metrics(outcomes)
    assert m.n_scored == 1 and m.skipped == [(0, "empty prediction"), (2, "empty prediction")]
    assert m.recall == 1.0 and m.false_refusal_rate is None
    with pytest.raises(ValueError, match="split must be one of"):
        judge_refusal("x", "in-domain")
    with pytest.raises(ValueError, match="one entry per sample"):
        evaluate_refusals(["a"], ["in_domain", "in_domain"])
