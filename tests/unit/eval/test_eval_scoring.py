"""Per-sample scoring: problems are reported on the sample, aggregates count them."""

from __future__ import annotations

import pytest

from honed.data.conversation import Conversation, Message
from honed.errors import ConfigError
from honed.eval.config import RefusalConfig
from honed.eval.samples import EvalSample
from honed.eval.scoring import Scorer, build_detector, gate_outcome, score_model


def _sample(i, prompt, reference, split=None, label=None, gate=None):
    problems = [] if reference else ["missing reference"]
    return EvalSample(i, f"s{i}", f"x:{i}", Conversation([Message("user", prompt)]), reference, split, label, gate, problems)


def test_generation_scores_skip_bad_samples_and_ignore_refusal_references():
    samples = [
        _sample(0, "Capital of France?", "Paris", "in_domain"),
        _sample(1, "What is TSH?", "Thyroid-stimulating hormone", "in_domain"),
        _sample(2, "Empty answer", "Something", "in_domain"),
        _sample(3, "No reference", None, "in_domain"),
        _sample(4, "Bake a cake?", "I can only help with lab tests.", "out_of_domain"),
    ]
    answers = ["Paris.", "A hormone from the pituitary", "", "whatever", "I can only help with lab tests."]
    r = score_model(samples, answers, Scorer())
    # BLEU by hand on a 0-1 scale: "Paris ." vs "Paris": 1-grams 1/2, 2-grams 0/1 smoothed to 1/2, no
    # longer n-grams in the answer (effective order 2), BP 1 → (1/2 · 1/2) ** (1/2) = 0.5.
    assert r.per_sample[0]["exact_match"] == 1.0 and r.per_sample[0]["bleu"] == pytest.approx(0.5)
    assert r.per_sample[2]["errors"] == ["empty prediction"]
    assert r.per_sample[3]["errors"] == ["missing reference"] and "rougeL" not in r.per_sample[3]
    # Only in-domain samples 0 and 1 are scored: the out-of-domain exact copy must not lift the mean.
    assert r.generation["exact_match"] == pytest.approx(0.5)
    assert r.generation_counts == {"n": 4, "n_scored": 2, "skipped": {"empty prediction": 1, "missing reference": 1}}
    assert r.domain["per_split"]["out_of_domain"] == {"n": 1, "answered": 0, "refused": 1, "answered_rate": 0.0, "refused_rate": 1.0}
    assert r.per_sample[4]["refused"] is True and r.domain["refusal_recall"] == 1.0
    assert r.domain["skipped"] == 1  # the empty answer is not judged


def test_classification_reports_labels_outside_the_set_per_sample():
    samples = [_sample(0, "a", "yes"), _sample(1, "b", "no"), _sample(2, "c", "maybe"), _sample(3, "d", None, label="no")]
    answers = ["Yes.", "perhaps", "yes", "no"]
    scores = [{"yes": -0.1, "no": -2.0}, {"yes": -3.0, "no": -0.5}, {"yes": -1.0, "no": -1.0}, {"yes": -2.0, "no": -0.1}]
    r = score_model(samples, answers, Scorer(labels=["yes", "no"]), scores)
    c = r.classification
    assert c["n_scored"] == 3 and c["n_invalid"] == 1 and c["accuracy"] == pytest.approx(2 / 3)
    assert c["confusion_matrix"] == [[1, 0], [0, 1]]
    assert c["auc_roc"] == 1.0  # from the log-likelihoods, not from the printed answers
    assert "not one of the labels" in r.per_sample[1]["errors"][0]
    assert "reference label 'maybe' is not one of" in r.per_sample[2]["errors"][0]
    assert r.per_sample[0]["predicted_label"] == "yes" and r.per_sample[1]["predicted_label"] is None


def test_gate_decisions_in_the_data_override_the_detector():
    samples = [_sample(0, "q", "a", "out_of_domain", gate="refuse"), _sample(1, "q", "a", "in_domain", gate=0.9),
               _sample(2, "q", "a", "in_domain", gate="??")]
    r = score_model(samples, ["Sure, here it is", "Sure", "Sure"], Scorer())
    assert r.per_sample[0]["refused"] is True and r.per_sample[1]["refused"] is True
    assert r.domain["false_refusal_rate"] == 1.0 and r.domain["skipped"] == 1
    assert gate_outcome("in_domain", False, 0.5).refused is False
    assert gate_outcome("in_domain", None, 0.5) is None


def test_detector_from_config_phrases_patterns_and_classifier():
    assert build_detector(RefusalConfig(phrases=["检验"])).is_refusal("这不属于检验范围")
    assert build_detector(RefusalConfig(phrases=[], patterns=[r"^no\b"])).is_refusal("No, not that.")
    detector = build_detector(RefusalConfig(classifier="os.path:isabs", threshold=0.5))
    assert detector.is_refusal("/abs") and not detector.is_refusal("rel")
    with pytest.raises(ConfigError, match="refusal.classifier='nope.mod:f': cannot import"):
        build_detector(RefusalConfig(classifier="nope.mod:f"))
