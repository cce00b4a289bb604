"""Classification metrics against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from honed.eval.metrics import auc_roc, binary_auroc, classification_metrics, match_label
from honed.eval.metrics.classification import softmax

# Label order is deliberately not alphabetical: the matrix must follow it.
LABELS = ["neutral", "positive", "negative"]
REFS = ["positive", "negative", "neutral", "positive", "negative", "neutral", "positive",
        "negative", "positive", "neutral"]
PREDS = ["positive", "positive", "neutral", "banana", "negative", "negative", "positive",
         "negative", "neutral", "unsure"]


def _check_against_sklearn(result, preds, refs, labels):
    assert result.accuracy == pytest.approx(accuracy_score(refs, preds))
    p, r, f, support = precision_recall_fscore_support(refs, preds, labels=labels,
                                                       zero_division=0)
    for k, label in enumerate(labels):
        row = result.per_class[label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[k], r[k], f[k]))
        assert row["support"] == support[k]
    macro = precision_recall_fscore_support(refs, preds, labels=labels, average="macro",
                                            zero_division=0)
    assert (result.macro["precision"], result.macro["recall"], result.macro["f1"]) == \
        pytest.approx(macro[:3])
    assert result.confusion_matrix == confusion_matrix(refs, preds, labels=labels).tolist()


def test_english_labels_equal_sklearn_with_invalid_predictions():
    result = classification_metrics(PREDS, REFS, LABELS)
    _check_against_sklearn(result, PREDS, REFS, LABELS)
    assert result.invalid == [(3, "banana"), (9, "unsure")]
    assert result.n_invalid == 2 and result.n_scored == 10
    assert result.accuracy == pytest.approx(5 / 10)  # invalid answers count as wrong


def test_chinese_labels_equal_sklearn():
    labels = ["正面", "负面", "中性"]
    refs = ["正面", "负面", "中性", "正面", "负面", "中性"]
    preds = ["正面", "中性", "中性", "负面", "负面", "不知道"]
    result = classification_metrics(preds, refs, labels)
    _check_against_sklearn(result, preds, refs, labels)
    assert result.invalid == [(5, "不知道")]


def test_predictions_are_normalised_before_matching():
    result = classification_metrics(["Positive.", " NEGATIVE ", "正面！"],
                                    ["positive", "negative", "正面"],
                                    labels=["positive", "negative", "正面"])
    assert result.accuracy == 1.0 and result.invalid == []
    strict = classification_metrics(["Positive."], ["positive"], ["positive", "negative"],
                                    normalize=False)
    assert strict.accuracy == 0.0 and strict.invalid == [(0, "Positive.")]


def test_match_label():
    assert match_label("ｙｅｓ", ["yes", "no"]) == "yes"
    assert match_label("yes, definitely", ["yes", "no"]) is None


def test_empty_predictions_and_missing_references_are_skipped_and_counted():
    result = classification_metrics(["yes", "", "no", "yes"], ["yes", "no", None, "no"],
                                    ["yes", "no"])
    assert result.n_scored == 2 and result.accuracy == 0.5
    assert result.skipped == [(1, "empty prediction"), (2, "missing reference")]


def test_reference_outside_labels_is_a_data_error():
    with pytest.raises(ValueError, match="reference 1 is 'maybe'"):
        classification_metrics(["yes", "no"], ["yes", "maybe"], ["yes", "no"])
    with pytest.raises(ValueError, match="same after normalisation"):
        classification_metrics(["yes"], ["yes"], ["Yes", "yes."])


def test_unpredicted_class_gets_zero_precision_like_sklearn():
    refs, preds = ["a", "b", "c"], ["a", "a", "a"]
    result = classification_metrics(preds, refs, ["a", "b", "c"])
    _check_against_sklearn(result, preds, refs, ["a", "b", "c"])
    assert result.per_class["b"]["precision"] == 0.0


def test_binary_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    scores = np.round(rng.normal(size=200) + y, 1)  # rounding makes many ties
    assert binary_auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert binary_auroc([True, True], [0.1, 0.2]) is None


def test_auc_roc_binary_from_log_likelihoods_equals_sklearn():
    rng = np.random.default_rng(1)
    labels = ["no", "yes"]
    refs = [labels[i] for i in rng.integers(0, 2, 60)]
    logits = rng.normal(size=(60, 2)) + np.array([[0, 1] if r == "yes" else [1, 0] for r in refs])
    expected = roc_auc_score([r == "yes" for r in refs], softmax(logits)[:, 1])
    result = auc_roc(logits.tolist(), refs, labels)
    assert result.auc_roc == pytest.approx(expected)
    assert 0.5 < result.auc_roc < 1.0 and result.n_scored == 60


def test_auc_roc_multiclass_one_vs_rest_macro_equals_sklearn():
    rng = np.random.default_rng(2)
    labels = ["c", "a", "b"]
    truth = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[truth]
    refs = [labels[t] for t in truth]
    # sklearn wants sorted labels: give it the label positions (columns are in that order).
    expected = roc_auc_score(truth, softmax(logits), multi_class="ovr", average="macro",
                             labels=[0, 1, 2])
    result = auc_roc(logits.tolist(), refs, labels)
    assert result.auc_roc == pytest.approx(expected)
    # softmax matters: raw logits give another ranking per class
    raw = auc_roc(logits.tolist(), refs, labels, scores_are="probabilities").auc_roc
    assert raw != pytest.approx(expected)
    as_dicts = [dict(zip(labels, row)) for row in logits.tolist()]
    assert auc_roc(as_dicts, refs, labels).auc_roc == pytest.approx(expected)


def test_auc_roc_skips_samples_without_scores_or_reference():
    scores = [[0.9, 0.1], None, [0.2, 0.8], [float("nan"), 0.0], [0.3, 0.7], [0.1]]
    refs = ["a", "a", "b", "b", None, "a"]
    result = auc_roc(scores, refs, ["a", "b"], scores_are="probabilities")
    assert result.auc_roc == 1.0 and result.n_scored == 2
    assert [i for i, _ in result.skipped] == [1, 3, 4, 5]


def test_auc_roc_undefined_when_one_class_only():
    result = auc_roc([[0.0, 1.0], [1.0, 0.0]], ["a", "a"], ["a", "b"])
    assert result.auc_roc is None
