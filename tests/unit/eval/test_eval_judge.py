"""LLM-as-judge against a stub OpenAI-compatible server on 127.0.0.1 started by the test."""

from __future__ import annotations

import socket

from honed.eval.config import JudgeConfig
from honed.eval.judge import judge_answers, parse_verdict


def test_judge_scores_each_answer_and_reports_failures_per_sample(stub_server, monkeypatch):
    replies = ['Verdict: {"relevance": 5, "accuracy": 4, "fluency": 5}', "no scores here", 500,
               '{"relevance": 1, "accuracy": 2, "fluency": 3}']
    url = stub_server(lambda body: replies.pop(0))
    monkeypatch.setenv("HONED_TEST_KEY", "secret")
    cfg = JudgeConfig(enabled=True, base_url=url, model="stub", api_key_env="HONED_TEST_KEY", timeout_s=5)
    items = [("q1", "a1", "r1"), ("q2", "a2", None), ("q3", "a3", "r3"), ("q4", "", "r4"), ("q5", "a5", "r5")]
    rows, summary = judge_answers(cfg, items)
    assert rows[0] == {"relevance": 5, "accuracy": 4, "fluency": 5}
    assert rows[1] == {"error": "the judge's reply held no 1-5 scores"}
    assert "failed" in rows[2]["error"] and rows[3] == {"error": "empty prediction"}
    assert rows[4] == {"relevance": 1, "accuracy": 2, "fluency": 3}
    assert summary["relevance"] == 3.0 and summary["n_scored"] == 2 and summary["n_failed"] == 3
    path, headers = stub_server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret"
    first = stub_server.calls[0]
    assert first["model"] == "stub" and "Reference answer:\nr1" in first["messages"][1]["content"]
    assert len(stub_server.calls) == 4  # the empty answer was never sent


def test_unreachable_judge_fails_once_with_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = JudgeConfig(enabled=True, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2)
    rows, summary = judge_answers(cfg, [("q", "a", None)] * 3)
    assert all("check judge.base_url" in r["error"] for r in rows)
    assert summary["n_scored"] == 0 and "judge endpoint" in summary["first_error"]


def test_parse_verdict_rejects_out_of_range_and_partial_scores():
    assert parse_verdict('{"relevance": 6, "accuracy": 4, "fluency": 5}') is None
    assert parse_verdict('{"relevance": 4, "fluency": 5}') is None
    assert parse_verdict('x {"a": 1} then {"relevance": "4", "accuracy": 4.0, "fluency": 2}') == {"relevance": 4, "accuracy": 4, "fluency": 2}
