"""Shared fixtures: tiny models of each family, built once per test session."""

from __future__ import annotations

import os

# No test may reach a model hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: `tiny_model_dir("qwen3")` → folder with a tiny random model + tokenizer (cached per session)."""
    from honed.testing import build_tiny_model

    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """Factory: `tiny_tokenizer("llama3")` → that family's tokenizer, loaded with AutoTokenizer (cached)."""
    from transformers import AutoTokenizer

    loaded = {}

    def load(family: str):
        if family not in loaded:
            loaded[family] = AutoTokenizer.from_pretrained(tiny_model_dir(family))
        return loaded[family]

    return load


@pytest.fixture
def stub_server():
    """A tiny OpenAI-compatible `/chat/completions` stub on 127.0.0.1, stopped after the test.

    `url = stub_server(reply_fn)`: reply_fn(request_body) → the assistant text, or an int to answer
    with that HTTP error status. `stub_server.calls` lists the request bodies and `stub_server.requests`
    the (path, headers) of each (headers look up case-insensitively: clients send `authorization`). A timer stops the server after 120 s whatever the test does.
    """
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(reply_fn, status: int = 200):
        calls, requests = [], []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append(body)
                requests.append((self.path, self.headers))  # case-insensitive lookups
                reply = reply_fn(body) if status == 200 else status
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    self.wfile.write(b'{"error": "stub failure"}')
                    return
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep test output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.timeout = 5
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        stopper = threading.Timer(120, server.shutdown)
        stopper.daemon = True
        stopper.start()
        servers.append((server, stopper))
        start.calls, start.requests = calls, requests
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server, stopper in servers:
        stopper.cancel()
        server.shutdown()
        server.server_close()
