"""The extra metrics in a report: numeric answers, diversity, language match, and the A/B section
(report.json, the terminal table and report.html), on hand-made runs (no model needed)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from honed.data.conversation import Conversation, Message
from honed.eval.config import eval_config_from_dict
from honed.eval.extras import add_extra_metrics
from honed.eval.html import render_html
from honed.eval.models import ModelSpec
from honed.eval.report import build_report, prediction_rows
from honed.eval.runner import ModelRun
from honed.eval.samples import EvalSample
from honed.eval.scoring import Scorer, score_model
from honed.eval.summary import print_summary

REFS = ["5.6 mmol/L", "120", "−2", "1,200", "4"]


def _sample(i, ref, split="in_domain"):
    return EvalSample(i, str(i), f"f:{i + 1}", Conversation([Message("user", f"q{i}")]), ref, split)


def _run(name, role, samples, answers, cfg):
    scores = score_model(samples, answers, Scorer())
    run = ModelRun(ModelSpec(name, "/m"), role, answers, scores.per_sample, [0.1] * len(answers))
    run.metrics = {"generation": scores.generation, "domain": scores.domain, "classification": None, "loss": None}
    add_extra_metrics(cfg, samples, run)
    return run


@pytest.fixture
def numeric():
    samples = [_sample(i, r) for i, r in enumerate(REFS)] + [_sample(5, "I only answer lab questions.", "out_of_domain")]
    cfg = eval_config_from_dict({"models": [{"path": "/a", "name": "tuned"}, {"path": "/m", "name": "base"}],
                                 "data": {"path": "e.jsonl"}, "comparison": {"n_resamples": 200}})
    tuned = _run("tuned", "evaluated", samples, ["5.5 mmol/L", "约120", "-2", "1200", "4", "I'm sorry, I can't help with that."], cfg)
    base = _run("base", "baseline", samples, ["7", "100", "2", "900", "no idea", "Sure!"], cfg)
    return cfg, samples, [tuned, base]


def test_regression_turns_on_for_numeric_references_and_scores_by_hand(numeric):
    cfg, samples, (tuned, base) = numeric
    reg = tuned.metrics["regression"]
    assert reg["n_scored"] == 5 and reg["mae"] == pytest.approx(0.1 / 5)
    assert base.metrics["regression"]["n_no_answer_number"] == 1
    assert base.metrics["regression"]["mae"] == pytest.approx((1.4 + 20 + 4 + 300) / 4)
    assert tuned.per_sample[0]["abs_error"] == pytest.approx(0.1) and "abs_error" not in base.per_sample[4]


def test_regression_stays_off_for_text_references():
    samples = [_sample(0, "Average blood glucose over three months."), _sample(1, "A liver enzyme.")]
    cfg = eval_config_from_dict({"models": [{"path": "/a"}], "data": {"path": "e.jsonl"}})
    run = _run("m", "evaluated", samples, ["Glucose 3 months", "enzyme"], cfg)
    assert run.metrics["regression"] is None and run.metrics["diversity"]["n_answers"] == 2


def test_regression_auto_stays_off_for_numeric_class_labels():
    from honed.eval.extras import regression_enabled

    base = {"models": [{"path": "/a"}], "data": {"path": "e.jsonl"}}
    assert regression_enabled(eval_config_from_dict(base), ["0", "1", "1"])
    assert not regression_enabled(eval_config_from_dict({**base, "labels": ["0", "1"]}), ["0", "1", "1"])
    assert regression_enabled(eval_config_from_dict({**base, "labels": ["0", "1"], "regression": {"enabled": True}}), ["0"])


def test_report_carries_extras_and_the_ab_comparison(numeric):
    cfg, samples, runs = numeric
    report = build_report(cfg, samples, runs, None)
    tuned = report["models"][0]["summary"]
    assert tuned["mae"] == pytest.approx(0.02) and "self_bleu" in tuned and "distinct_1" in tuned
    ab = report["comparison"]["models"]["tuned"]
    assert ab["abs_error"]["wins"] == 4 and ab["abs_error"]["test"] == "wilcoxon"
    assert ab["correct_decision"]["mean_a"] == 1.0 and ab["correct_decision"]["test"] == "mcnemar_exact"
    json.dumps(report, allow_nan=False)

    out = io.StringIO()
    print_summary(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "A/B vs base" in text and "absolute error (numeric)" in text and "4/0/0" in text
    page = render_html(report, prediction_rows(samples, runs))
    assert "A/B comparison against base" in page and "MAE (numeric)" in page


def test_comparison_can_be_turned_off(numeric):
    cfg, samples, runs = numeric
    cfg.comparison.enabled = False
    assert build_report(cfg, samples, runs, None)["comparison"] is None


def test_language_match_uses_a_real_language_identifier():
    samples = [_sample(0, "Der Wert misst den durchschnittlichen Blutzucker."), _sample(1, "血常规检查红细胞和白细胞。")]
    cfg = eval_config_from_dict({"models": [{"path": "/a"}], "data": {"path": "e.jsonl"}, "language_match": True})
    run = _run("m", "evaluated", samples, ["The value measures average blood sugar.", "红细胞、白细胞和血小板。"], cfg)
    lang = run.metrics["language"]
    assert lang["match_rate"] == 0.5 and lang["per_language"] == {"de": {"n": 1, "matched": 0}, "zh": {"n": 1, "matched": 1}}
    assert run.per_sample[0]["answer_language"] == "en"
