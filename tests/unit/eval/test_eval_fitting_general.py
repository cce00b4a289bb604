"""Over-/under-fitting verdicts and the built-in general-ability set."""

from __future__ import annotations

import re

from honed.eval.fitting import analyse_fitting
from honed.eval.general import GENERAL_QUESTIONS, answer_is_correct, score_general


def _rows(train, val):
    return ([{"kind": "train", "step": s, "loss": v} for s, v in train] +
            [{"kind": "eval", "step": s, "loss": v} for s, v in val])


def test_rising_validation_with_falling_training_loss_is_flagged():
    train = [(s, 3.0 - 0.1 * s) for s in range(1, 25)]
    f = analyse_fitting(_rows(train, [(4, 2.0), (8, 1.6), (12, 1.7), (16, 1.8), (20, 1.9)]), patience=3)
    assert f["overfitting"] and f["best_step"] == 8 and f["rising_since_step"] == 8
    assert "over-fitting" in f["verdict"] and "step 8" in f["verdict"]
    # Two rises are not enough for patience 3.
    assert not analyse_fitting(_rows(train, [(4, 2.0), (8, 1.6), (12, 1.7), (16, 1.8)]), patience=3)["overfitting"]


def test_validation_rising_together_with_training_loss_is_not_overfitting():
    train = [(s, 1.0 + 0.1 * s) for s in range(1, 25)]  # diverging, not over-fitting
    f = analyse_fitting(_rows(train, [(4, 2.0), (8, 2.1), (12, 2.2), (16, 2.3)]), patience=2)
    assert not f["overfitting"]


def test_still_falling_training_loss_is_underfitting_and_no_validation_is_said():
    train = [(s, 5.0 - 0.2 * s) for s in range(1, 21)]
    f = analyse_fitting(_rows(train, []))
    assert f["underfitting"] and f["best_step"] is None and "under-fitting" in f["verdict"]
    flat = analyse_fitting(_rows([(s, 1.0) for s in range(1, 21)], []))
    assert not flat["underfitting"] and "no validation metrics" in flat["verdict"]


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
