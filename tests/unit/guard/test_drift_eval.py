"""Gate evaluation (ROC numbers by hand), drift (PSI by hand, KS against scipy), recurring topics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ks_2samp

from honed.guard.drift import drift_report, psi, psi_verdict
from honed.guard.evaluate import evaluate_gate, roc_metrics
from honed.guard.fit import fit_gate
from honed.guard.gate import load_gate, read_calibration
from honed.guard.questions import read_questions

from .test_gate import LAB

COOKING = ["How do I bake sourdough bread?", "How do I bake rye bread at home?", "How long do I bake banana bread?"]
SPORTS = ["Who won the football world cup?", "Who won the football world cup in 2018?"]


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "gate"
    # target 0.6: twelve questions leave the character n-gram gate too little margin for bread and football at 0.95
    fit_gate(LAB, out, embedder="char-ngram", k=2, calibration_fraction=0.34, seed=1, target_tpr=0.6)
    return load_gate(out)


def test_roc_metrics_by_hand():
    m = roc_metrics("all", [0.9, 0.8, 0.7], [0.75, 0.1], gate_threshold=0.78)
    assert m.auroc == pytest.approx(5 / 6)  # 5 of the 6 (in, out) pairs are ordered right
    assert (m.fpr_at_95, m.threshold_at_95) == (0.5, 0.7)  # all three in pass only at 0.7, which lets 0.75 through
    assert (m.tpr, m.fpr) == (pytest.approx(2 / 3), 0.0)


def test_evaluate_gate_writes_a_histogram_per_split(gate, tmp_path):
    report = evaluate_gate(gate, LAB[:4], COOKING + SPORTS, tmp_path / "plots")
    assert [p.name for p in report.plots] == ["scores-in-domain.png", "scores-out-of-domain.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report.plots)
    ins = [d.score for d in gate.check_many(LAB[:4])]
    outs = [d.score for d in gate.check_many(COOKING + SPORTS)]
    from sklearn.metrics import roc_auc_score

    assert report.rows[0].auroc == pytest.approx(roc_auc_score([1] * 4 + [0] * 5, ins + outs))


def test_psi_by_hand():
    expected = np.arange(100) / 100  # quartile bins at 0.2475, 0.495, 0.7425 with 4 bins
    actual = np.r_[np.full(50, 0.1), np.full(50, 0.9)]  # half in the first bin, half in the last
    value = psi(expected, actual, bins=4)
    by_hand = 2 * (0.5 - 0.25) * np.log(0.5 / 0.25) + 2 * (1e-4 - 0.25) * np.log(1e-4 / 0.25)
    assert value == pytest.approx(by_hand, rel=1e-6)
    assert psi_verdict(0.05) == "stable" and psi_verdict(0.2) == "moderate shift" and psi_verdict(0.3) == "major shift"


def test_drift_compares_live_scores_with_the_calibration_scores_and_flags_off_topic_traffic(gate):
    calibration = read_calibration(gate.folder)
    # Cross-fitted calibration scores each question without its own fold; asked again, it finds itself
    # in the index and scores at least as high: repeated training questions read as more in-domain.
    texts = [c["text"] for c in calibration]
    again = [d.score for d in gate.check_many(texts)]
    assert all(a >= c["score"] - 1e-6 for a, c in zip(again, calibration)) and sum(a > c["score"] + 1e-6 for a, c in zip(again, calibration)) >= 10
    same = drift_report(gate, texts)
    assert same.routes[0].ks == pytest.approx(ks_2samp([c["score"] for c in calibration], again).statistic)
    queries = COOKING * 2 + SPORTS + ["What is TSH?"]
    moved = drift_report(gate, queries, recent=4, cluster_distance=0.6)
    route = moved.routes[0]
    scores = [d.score for d in gate.check_many(queries)]
    ks = ks_2samp([c["score"] for c in calibration], scores)
    assert route.ks == pytest.approx(ks.statistic) and route.ks_pvalue == pytest.approx(ks.pvalue)
    assert route.psi > 0.25 and route.refused_share == pytest.approx(np.mean([not d.in_domain for d in gate.check_many(queries)]))
    assert moved.n_recent == 4
    # The cooking questions (asked twice each) form the biggest recurring topic, then the sports ones.
    assert [t.size for t in moved.topics] == [6, 2]
    assert set(moved.topics[0].examples) == set(COOKING) and set(moved.topics[1].examples) == set(SPORTS)


def test_query_log_and_kind_marked_records_are_read(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"text": t, "score": 0.1, "in_domain": False}) + "\n" for t in COOKING))
    assert read_questions(log).texts == COOKING
    data = tmp_path / "d.jsonl"
    rows = [{"kind": "in_domain", "messages": [{"role": "user", "content": "What is TSH?"}, {"role": "assistant", "content": "A hormone."}]},
            {"kind": "out_of_domain", "messages": [{"role": "user", "content": "Bake bread?"}, {"role": "assistant", "content": "No."}]},
            {"instruction": "What is ALT?", "output": "An enzyme."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ins = read_questions(data, "in_domain")
    assert ins.texts == ["What is TSH?", "What is ALT?"] and ins.skipped == {"records marked kind=out_of_domain": 1}
    assert read_questions(data, "out_of_domain").texts == ["Bake bread?", "What is ALT?"]
