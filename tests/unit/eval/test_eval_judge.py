"""LLM-as-judge against a stub OpenAI-compatible server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from honed.eval.config import JudgeConfig
from honed.eval.judge import judge_answers, parse_verdict


class _Judge(BaseHTTPRequestHandler):
    replies: list[str] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = type(self).replies.pop(0) if type(self).replies else '{"relevance": 3, "accuracy": 3, "fluency": 3}'
        if content == "HTTP500":
            self.send_response(500)
            self.end_headers()
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    """A judge stub that serves until the test ends (and at most 60 s, so it can never hang CI)."""
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    server.timeout = 1
    _Judge.seen, _Judge.replies = [], []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    killer = threading.Timer(60, server.shutdown)
    killer.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Judge
    killer.cancel()
    server.shutdown()
    server.server_close()


def test_judge_scores_each_answer_and_reports_failures_per_sample(judge_server, monkeypatch):
    url, handler = judge_server
    monkeypatch.setenv("HONED_TEST_KEY", "secret")
    handler.replies = ['Verdict: {"relevance": 5, "accuracy": 4, "fluency": 5}', "no scores here", "HTTP500",
                       '{"relevance": 1, "accuracy": 2, "fluency": 3}']
    cfg = JudgeConfig(enabled=True, base_url=url, model="stub", api_key_env="HONED_TEST_KEY", timeout_s=5)
    items = [("q1", "a1", "r1"), ("q2", "a2", None), ("q3", "a3", "r3"), ("q4", "", "r4"), ("q5", "a5", "r5")]
    rows, summary = judge_answers(cfg, items)
    assert rows[0] == {"relevance": 5, "accuracy": 4, "fluency": 5}
    assert rows[1] == {"error": "the judge's reply held no 1-5 scores"}
    assert "failed" in rows[2]["error"] and rows[3] == {"error": "empty prediction"}
    assert rows[4] == {"relevance": 1, "accuracy": 2, "fluency": 3}
    assert summary["relevance"] == 3.0 and summary["n_scored"] == 2 and summary["n_failed"] == 3
    first = handler.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
    assert first["body"]["model"] == "stub" and "Reference answer:\nr1" in first["body"]["messages"][1]["content"]
    assert len(handler.seen) == 4  # the empty answer was never sent


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
