"""report.json structure, deltas, predictions rows and the self-contained HTML page (no model needed)."""

from __future__ import annotations

import json
import math
import re

import pytest

from honed.data.conversation import Conversation, Message
from honed.eval.config import eval_config_from_dict
from honed.eval.models import ModelSpec
from honed.eval.report import SCHEMA_VERSION, build_report, deltas, flatten_metrics, write_outputs
from honed.eval.runner import ModelRun, check_output_dir
from honed.eval.samples import EvalSample
from honed.eval.scoring import Scorer, score_model
from honed.errors import OutputExistsError


def _runs(samples, cfg):
    runs = []
    for name, answers, loss, role in (("tuned", ["Paris", "抱歉，我只能回答检验问题。", ""], 0.5, "evaluated"),
                                      ("base", ["London", "Sure: bake it.", "x"], 2.0, "baseline")):
        scores = score_model(samples, answers, Scorer(labels=None))
        run = ModelRun(ModelSpec(name, "/m", "/a" if name == "tuned" else None), role, answers, scores.per_sample, [0.1, 0.2, 0.3])
        run.metrics = {"generation": scores.generation, "domain": scores.domain, "classification": None,
                       "loss": {"mean_loss": loss, "perplexity": math.exp(loss), "n_tokens": 10},
                       "efficiency": {"latency_s": {"p50": 0.2, "p95": 0.29}, "tokens_per_s": 50.0,
                                      "peak_memory_bytes": 2**21, "size_on_disk_bytes": 2**20, "generated_tokens": 9}}
        runs.append(run)
    return runs


@pytest.fixture
def built(tmp_path):
    samples = [EvalSample(0, "a", "f:1", Conversation([Message("system", "Scope"), Message("user", "Capital of France?")]), "Paris", "in_domain"),
               EvalSample(1, "b", "f:2", Conversation([Message("user", "Cake?")]), "检验之外的问题无法回答", "out_of_domain"),
               EvalSample(2, "c", "f:3", Conversation([Message("user", "Empty?")]), None, "in_domain", problems=["missing reference"])]
    cfg = eval_config_from_dict({"models": [{"path": "/a", "name": "tuned"}, {"path": "/m", "name": "base"}],
                                 "data": {"path": "e.jsonl"}, "output_dir": str(tmp_path / "rep")})
    runs = _runs(samples, cfg)
    fitting = {"train": [[1, 3.0], [2, 2.0]], "validation": [[2, 2.5]], "best_step": 2, "overfitting": False,
               "underfitting": False, "verdict": "no over-fitting detected", "run_dir": "/r", "best_checkpoint": None}
    return cfg, samples, runs, build_report(cfg, samples, runs, fitting)


def test_report_has_schema_models_and_signed_deltas(built):
    cfg, samples, runs, report = built
    assert report["schema"] == "honed.eval.report" and report["schema_version"] == SCHEMA_VERSION == 1
    assert [m["name"] for m in report["models"]] == ["tuned", "base"] and report["baseline"] == "base"
    d = report["deltas"]["tuned"]
    assert d["loss"] == pytest.approx(-1.5) and d["exact_match"] == pytest.approx(1.0)
    assert d["out_of_domain_refused"] == pytest.approx(1.0)
    assert report["data"]["problems"] == {"missing reference": 1} and report["data"]["splits"] == {"in_domain": 2, "out_of_domain": 1}
    assert report["metric_labels"]["loss"]["higher_is_better"] is False
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN/inf anywhere


def test_flatten_converts_bytes_and_skips_missing_and_nonfinite():
    flat = flatten_metrics({"loss": {"mean_loss": 1.0, "perplexity": float("inf")},
                            "efficiency": {"size_on_disk_bytes": 3 * 2**20}, "domain": None})
    assert flat == {"loss": 1.0, "size_mb": 3.0}
    assert deltas({"a": {"x": 1.0}, "b": {"x": 3.0, "y": 1.0}}, "a") == {"b": {"x": 2.0}}
    assert deltas({"a": {}}, None) == {}


def test_outputs_are_written_together_and_never_silently_replaced(built):
    cfg, samples, runs, report = built
    out = write_outputs(cfg, report, samples, runs)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "report.html", "report.json"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and rows[0]["system"] == "Scope" and rows[0]["prompt"] == "Capital of France?"
    assert rows[0]["models"]["tuned"]["exact_match"] == 1.0 and rows[0]["models"]["base"]["answer"] == "London"
    assert rows[2]["models"]["tuned"]["errors"] == ["missing reference", "empty prediction"]
    assert rows[1]["models"]["tuned"]["refused"] is True
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_dir(cfg)
    cfg.overwrite = True
    assert check_output_dir(cfg) == out


def test_html_is_one_self_contained_page_with_tables_and_plots(built, tmp_path):
    cfg, samples, runs, report = built
    out = write_outputs(cfg, report, samples, runs)
    html = (out / "report.html").read_text(encoding="utf-8")
    # Nothing is fetched from elsewhere: no external scripts, styles or images.
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html) and "<script" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # metric bars, loss curves, two answered/refused matrices, latency histogram
    assert len(images) == 5 and all(img.startswith("iVBORw0KGgo") for img in images)
    assert "Δ tuned" in html and "<td class='num better'>-1.5000</td>" in html  # lower loss is better
    assert "检验之外的问题无法回答" in html and "missing reference" in html
    assert "&lt;" not in report["models"][0]["name"]
    assert "P(refuse)" not in html  # no refusal calibration, no such section


def test_html_shows_p_refuse_per_split_with_the_threshold(built, monkeypatch):
    """With `refusal_probability` in the predictions: a histogram per split, the threshold marked, and the calibration's numbers."""
    from honed.eval import plots

    cfg, samples, runs, report = built
    for row, p in zip(runs[0].per_sample, (0.2, 0.9, 0.7)):
        row["refusal_probability"] = p
    report["refusal_calibration"] = {"file": "/cal/refusal_calibration.json", "threshold": 0.5, "openings": 3, "applied_to": "tuned"}
    drawn = []
    real = plots.refusal_probability_histogram
    monkeypatch.setattr(plots, "refusal_probability_histogram", lambda *a: drawn.append(a) or real(*a))
    html = (write_outputs(cfg, report, samples, runs) / "report.html").read_text(encoding="utf-8")
    assert drawn == [({"in_domain": [0.2, 0.7], "out_of_domain": [0.9]}, 0.5, "tuned: P(refuse) per split")]  # base has none
    assert len(re.findall(r'src="data:image/png;base64,iVBORw0KGgo', html)) == 6 and 'alt="P(refuse) histogram of tuned"' in html
    assert "Threshold <b>0.5000</b> · 3 refusal openings · applied to <b>tuned</b> · <code>/cal/refusal_calibration.json</code>" in html
    # per split: n, mean P(refuse), how many lie below the threshold (their refusal openings banned)
    assert ("<tr><td>tuned</td><td>in_domain</td><td class='num'>2</td><td class='num'>0.4500</td><td class='num'>1</td></tr>"
            "<tr><td>tuned</td><td>out_of_domain</td><td class='num'>1</td><td class='num'>0.9000</td><td class='num'>0</td></tr>") in html


def test_overwrite_never_replaces_a_folder_holding_the_inputs(tmp_path):
    from honed.errors import OutputExistsError
    from honed.eval.config import eval_config_from_dict
    from honed.eval.runner import check_output_dir

    run = tmp_path / "runs" / "lora"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text("{}")
    data = tmp_path / "eval.jsonl"
    data.write_text("{}\n")
    cfg = eval_config_from_dict({"models": [{"path": str(run)}], "data": {"path": str(data)}, "output_dir": str(tmp_path / "runs"), "overwrite": True})
    with pytest.raises(OutputExistsError, match="input of this evaluation"):
        check_output_dir(cfg)
    cfg = eval_config_from_dict({"models": [{"path": str(run)}], "data": {"path": str(data)}, "output_dir": str(tmp_path / "report"), "overwrite": True})
    assert check_output_dir(cfg) == tmp_path / "report"
