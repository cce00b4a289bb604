"""The `openai` generator kind goes through the official `openai` client: the requests a local stub
server receives, the client's retries and timeouts, and errors that name the endpoint. No network."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from honed.cli import main
from honed.data import Conversation, Message
from honed.data.augment.io import write_conversations
from honed.data.generators import GeneratorError, OpenAIGenerator, make_generator

HI = [Message("system", "Be brief."), Message("user", "hi")]


def test_the_request_as_the_server_receives_it(stub_server, monkeypatch):
    monkeypatch.setenv("HONED_GEN_KEY", "sk-test")
    url = stub_server(lambda body: "hello")
    gen = make_generator({"kind": "openai", "base_url": url + "/", "model": "m1", "api_key_env": "HONED_GEN_KEY",
                          "temperature": 0.25, "max_tokens": 7})
    assert gen.complete(HI, seed=11) == "hello"
    path, headers = stub_server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("OpenAI/Python")  # sent by the official client, not by hand
    assert stub_server.calls[0] == {"model": "m1", "messages": [{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": "hi"}],
                                    "temperature": 0.25, "max_tokens": 7, "seed": 11}
    gen.complete(HI)
    assert "seed" not in stub_server.calls[1]


def test_an_api_key_given_directly_wins_over_the_environment(stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    url = stub_server(lambda body: "ok")
    OpenAIGenerator(url, "m", api_key="direct").complete(HI)
    OpenAIGenerator(url, "m", api_key_env=None).complete(HI)  # no key anywhere: a placeholder, not an error
    assert [h["Authorization"] for _, h in stub_server.requests] == ["Bearer direct", "Bearer not-needed"]


def test_server_errors_are_retried_by_the_client_client_errors_are_not(stub_server):
    replies = [503, 500, "third time lucky"]
    url = stub_server(lambda body: replies.pop(0))
    assert OpenAIGenerator(url, "m", retries=2).complete(HI) == "third time lucky"
    assert len(stub_server.calls) == 3

    url = stub_server(lambda body: 400)
    with pytest.raises(GeneratorError, match=rf"generator {url}/chat/completions: HTTP 400: .*stub failure") as err:
        OpenAIGenerator(url, "m", retries=3).complete(HI)
    assert len(stub_server.calls) == 1 and not err.value.unreachable  # a 400 is not asked again


def test_a_slow_server_times_out_with_the_endpoint_named(stub_server):
    url = stub_server(lambda body: time.sleep(1.5) or "late")
    with pytest.raises(GeneratorError, match=r"chat/completions: no answer within 0.3 s \(after 1 retries\)") as err:
        OpenAIGenerator(url, "m", timeout=0.3, retries=1).complete(HI)
    assert err.value.unreachable and len(stub_server.calls) == 2  # the client asked twice


def test_nothing_listening_and_replies_that_are_not_completions():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GeneratorError, match=rf"generator http://127.0.0.1:{port}/v1/chat/completions: cannot connect .*base_url"):
        OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "m", retries=0, timeout=2).complete(HI)

    # An httpx mock transport passed to the client: a server that answers something else.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"result": "not a chat completion"})

    gen = OpenAIGenerator("http://stub.invalid/v1", "m", retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(GeneratorError, match="stub.invalid/v1/chat/completions: the reply is not an OpenAI chat completion"):
        gen.complete(HI)


def test_honed_data_synth_calls_the_endpoint_with_its_flags(stub_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNTH_KEY", "k1")
    questions = ["What is HbA1c?", "What is HbA1c?", "What is ALT?"]  # the second repeats the first: rejected
    url = stub_server(lambda body: json.dumps({"user": questions.pop(0), "assistant": "A lab test."}))
    examples = tmp_path / "ex.jsonl"
    write_conversations(examples, [Conversation([Message("user", "What is TSH?"), Message("assistant", "A thyroid hormone.")])])
    out = tmp_path / "syn.jsonl"
    assert main(["data", "synth", str(examples), "--endpoint", url, "--model", "gen", "--key-env", "SYNTH_KEY",
                 "--n", "3", "--max-tokens", "64", "--timeout", "5", "--retries", "0", "--seed", "4", "-o", str(out)]) == 0
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()] == ["What is HbA1c?", "What is ALT?"]
    assert "2 of 3 generations kept" in capsys.readouterr().out
    bodies = stub_server.calls
    assert [(b["model"], b["max_tokens"], b["temperature"]) for b in bodies] == [("gen", 64, 0.8)] * 3
    assert stub_server.requests[0][1]["Authorization"] == "Bearer k1"


def test_honed_data_synth_names_the_endpoint_it_cannot_reach(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    examples = tmp_path / "ex.jsonl"
    write_conversations(examples, [Conversation([Message("user", "q"), Message("assistant", "a")])])
    code = main(["data", "synth", str(examples), "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "gen",
                 "--retries", "0", "--timeout", "2", "-o", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code != 0 and f"127.0.0.1:{port}/v1/chat/completions: cannot connect" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()
