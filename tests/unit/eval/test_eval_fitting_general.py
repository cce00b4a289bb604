"""Over-/under-fitting verdicts and the built-in general-ability set."""

from __future__ import annotations

import re

import pytest

from honed.eval.fitting import analyse_fitting
from honed.eval.general import GENERAL_QUESTIONS, answer_is_correct, score_general


def _rows(train, val):
    return ([{"kind": "train", "step": s, "loss": v} for s, v in train] +
            [{"kind": "eval", "step": s, "loss": v} for s, v in val])


def _falling(n=24, start=3.0, slope=0.1):
    return [(s, start - slope * s) for s in range(1, n + 1)]


def test_rising_validation_with_falling_training_loss_is_overfitting():
    f = analyse_fitting(_rows(_falling(), [(4, 2.0), (8, 1.6), (12, 1.7), (16, 1.8), (20, 1.9)]), patience=3)
    assert (f["diagnosis"], f["best_step"], f["rising_since_step"]) == ("overfitting", 8, 8)
    assert f["overfitting"] and not f["underfitting"]
    assert "over-fitting" in f["verdict"] and "step 8" in f["verdict"]
    # Two rises after the minimum are not enough for patience 3 (and the gap is small): a good fit so far.
    short = analyse_fitting(_rows(_falling(16, 2.0, 0.01), [(4, 2.0), (8, 1.9), (12, 1.95), (16, 1.96)]), patience=3)
    assert short["diagnosis"] == "good_fit"


def test_validation_rising_together_with_training_loss_is_diverging():
    train = [(s, 1.0 + 0.1 * s) if s > 4 else (s, 1.5) for s in range(1, 25)]
    f = analyse_fitting(_rows(train, [(4, 2.0), (8, 2.1), (12, 2.2), (16, 2.3)]), patience=2)
    assert f["diagnosis"] == "diverging" and not f["overfitting"]
    assert "lower the learning rate" in f["verdict"]


def test_validation_still_falling_at_the_end_is_underfitting():
    train = [(s, 3.0 - 0.05 * s) for s in range(1, 21)]
    f = analyse_fitting(_rows(train, [(5, 2.9), (10, 2.7), (15, 2.5), (20, 2.3)]))
    assert f["diagnosis"] == "underfitting" and f["underfitting"] and f["best_step"] == 20
    assert f["gap"] == pytest.approx(2.3 - (3.0 - 0.05 * 18))  # last validation minus the mean of train steps 16-20


def test_flat_validation_near_its_minimum_is_a_good_fit():
    train = [(s, 1.0) for s in range(1, 21)]
    f = analyse_fitting(_rows(train, [(5, 1.3), (10, 1.21), (15, 1.2), (20, 1.2)]))
    assert f["diagnosis"] == "good_fit" and "good fit" in f["verdict"] and f["best_step"] == 15


def test_training_far_below_validation_is_memorising():
    # The case a relative-drop rule called "under-fitting": training loss 0.056, validation flat near 1.0.
    train = [(s, 0.056) for s in range(1, 21)]
    f = analyse_fitting(_rows(train, [(5, 1.1), (10, 1.0), (15, 1.0), (20, 1.0)]))
    assert f["diagnosis"] == "overfitting" and "memorising" in f["verdict"]
    assert "best checkpoint (step 10)" in f["verdict"]  # the minimum (earliest of the ties) came before the end


def test_memorising_with_the_minimum_last_names_no_earlier_checkpoint():
    # The quickstart's curve: validation still creeping down at the end, far above the training loss.
    train = [(s, 0.2) for s in range(1, 21)]
    f = analyse_fitting(_rows(train, [(5, 2.0), (10, 1.6), (15, 1.53), (20, 1.52)]))
    assert f["diagnosis"] == "overfitting" and f["best_step"] == 20
    assert "best checkpoint" not in f["verdict"] and "use more data, fewer epochs" in f["verdict"]


def test_without_validation_data_nothing_is_claimed():
    steep = analyse_fitting(_rows([(s, 5.0 - 0.2 * s) for s in range(1, 21)], []))
    assert steep["diagnosis"] == "no_validation" and not steep["underfitting"] and not steep["overfitting"]
    assert "cannot tell" in steep["verdict"]
    assert analyse_fitting([])["diagnosis"] == "no_metrics"


def test_general_set_is_bilingual_with_unique_ids_and_checkable_answers():
    assert len(GENERAL_QUESTIONS) >= 30
    assert len({q.id for q in GENERAL_QUESTIONS}) == len(GENERAL_QUESTIONS)
    langs = {q.lang for q in GENERAL_QUESTIONS}
    assert langs == {"en", "zh"}
    for q in GENERAL_QUESTIONS:
        assert q.answers and (q.lang == "en" or re.search(r"[\u4e00-\u9fff]", q.question))
        assert answer_is_correct(f"The answer is {q.answers[0]}.", q.answers)


def test_general_answers_match_whole_numbers_and_chinese_substrings():
    assert answer_is_correct("答案是北京。", ["北京"])
    assert not answer_is_correct("1440", ["144"]) and answer_is_correct("It is 144.", ["144"])
    assert not answer_is_correct("", ["Paris"])
    rows, summary = score_general(["Paris", "抱歉，我只能回答检验问题。"] + [""] * (len(GENERAL_QUESTIONS) - 2))
    assert rows[0]["correct"] and rows[1]["refused"]
    assert summary["accuracy"] == 1 / len(GENERAL_QUESTIONS) and summary["accuracy_en"] > summary["accuracy_zh"]


def test_lm_eval_hook_says_how_to_install_when_missing(monkeypatch):
    import pytest

    from honed.errors import ConfigError
    from honed.eval import harness
    from honed.eval.config import LmEvalConfig
    from honed.eval.models import ModelSpec

    spec = ModelSpec("m", "/models/m")
    assert harness.run_lm_eval(spec, LmEvalConfig()) == {}  # nothing asked, nothing run
    monkeypatch.setattr(harness, "lm_eval_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install lm-eval"):
        harness.run_lm_eval(spec, LmEvalConfig(tasks=["arc_easy"]))
