"""The HTTP surface over a fake character backend: answers, streaming, errors, limits, gate, knowledge base."""

from __future__ import annotations

import json
import logging
import threading

from honed.serve.domain import KnowledgeRetriever
from honed.testing.serve import FakeGate, FakeKB, fake_build_rag

CHAT = {"model": "honed", "messages": [{"role": "user", "content": "What is TSH?"}]}
KEY = {"Authorization": "Bearer s3cret"}


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_chat_completion_answer_usage_and_default_system_prompt(make_client, backend):
    with make_client(system_prompt="You answer lab questions.") as client:
        r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "honed"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there, friend."}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt_len = len("system:You answer lab questions.|user:What is TSH?|")
    assert body["usage"] == {"prompt_tokens": prompt_len, "completion_tokens": 21, "total_tokens": prompt_len + 21}
    assert [(m.role, m.content) for m in backend.messages[0]] == [("system", "You answer lab questions."), ("user", "What is TSH?")]
    assert "honed" not in body


def test_request_system_prompt_wins_over_the_default(make_client, backend):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    with make_client(system_prompt="scope") as client:
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert [(m.role, m.content) for m in backend.messages[0]] == [("system", "Be brief."), ("user", "Hi")]


def test_streaming_deltas_add_up_to_the_answer(make_client):
    with make_client() as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert text == "Hello there, friend."
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 21


def test_max_tokens_and_stop_strings_cut_the_answer(make_client):
    with make_client() as client:
        short = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}).json()["choices"][0]
        stopped = client.post("/v1/chat/completions", json={**CHAT, "stop": [", f"]}).json()["choices"][0]
    assert (short["message"]["content"], short["finish_reason"]) == ("Hello", "length")
    assert (stopped["message"]["content"], stopped["finish_reason"]) == ("Hello there", "stop")


def test_completions_answer_each_prompt(make_client, backend):
    with make_client() as client:
        body = client.post("/v1/completions", json={"model": "honed", "prompt": ["a", "bb"], "max_tokens": 3}).json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [(0, "Hel", "length"), (1, "Hel", "length")]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}


def test_models_and_health(make_client):
    with make_client(model_name="lab-expert") as client:
        models = client.get("/v1/models").json()
        health = client.get("/health").json()
    assert [m["id"] for m in models["data"]] == ["lab-expert"]
    assert health["status"] == "ok" and health["backend"] == "fake"


def test_api_key_missing_wrong_and_right(make_client):
    with make_client(api_key="s3cret") as client:
        missing = client.post("/v1/chat/completions", json=CHAT)
        wrong = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        models = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        right = client.post("/v1/chat/completions", json=CHAT, headers=KEY)
        health = client.get("/health")
    assert (missing.status_code, wrong.status_code, models.status_code) == (401, 401, 401)
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200 and health.status_code == 200


def test_client_errors_are_openai_shaped(make_client):
    with make_client(max_tokens_limit=100, max_prompt_tokens=30) as client:
        malformed = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
        not_object = client.post("/v1/chat/completions", json=[1, 2])
        invalid = client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "hi"}]})
        unknown_model = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"})
        too_many = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 101})
        long_prompt = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 40}]})
        n2 = client.post("/v1/chat/completions", json={**CHAT, "n": 2})
        route = client.get("/v1/nothing")
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "invalid_json")
    assert not_object.status_code == 400
    assert (invalid.status_code, invalid.json()["error"]["param"]) == (422, "messages.0.role")
    assert (unknown_model.status_code, unknown_model.json()["error"]["code"]) == (404, "model_not_found")
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "max_tokens_too_large")
    assert (long_prompt.status_code, long_prompt.json()["error"]["code"]) == (400, "context_length_exceeded")
    assert (n2.status_code, n2.json()["error"]["param"]) == (400, "n")
    assert (route.status_code, route.json()["error"]["code"]) == (404, "not_found")


def test_oversized_bodies_get_413_announced_or_chunked(make_client):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    with make_client(max_body_bytes=1000) as client:
        announced = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
        chunked = client.post("/v1/chat/completions", content=iter([big[:600], big[600:]]), headers={"content-type": "application/json"})
        small = client.post("/v1/chat/completions", json=CHAT)
    assert (announced.status_code, announced.json()["error"]["code"]) == (413, "request_too_large")
    assert (chunked.status_code, chunked.json()["error"]["code"]) == (413, "request_too_large")
    assert small.status_code == 200


def test_full_server_answers_429_with_retry_after(make_client, backend):
    backend.gate.clear()  # the first request stays in flight
    with make_client(max_concurrency=1) as client:
        first = {}
        worker = threading.Thread(target=lambda: first.update(r=client.post("/v1/chat/completions", json=CHAT)))
        worker.start()
        assert backend.started.wait(10)
        busy = client.post("/v1/chat/completions", json=CHAT)
        backend.gate.set()
        worker.join(10)
        after = client.post("/v1/chat/completions", json=CHAT)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    assert first["r"].status_code == 200 and after.status_code == 200


def test_timeout_answers_504_and_frees_the_slot(make_client, backend):
    backend.gate.clear()
    with make_client(request_timeout_s=0.3, max_concurrency=1) as client:
        slow = client.post("/v1/chat/completions", json=CHAT)
        backend.gate.set()
        again = client.post("/v1/chat/completions", json=CHAT)
    assert (slow.status_code, slow.json()["error"]["code"]) == (504, "timeout")
    assert again.status_code == 200


def test_requests_arriving_together_share_one_batch(make_client, backend):
    results = []
    with make_client(max_batch=4, batch_window_ms=3000) as client:
        threads = [threading.Thread(target=lambda: results.append(client.post("/v1/chat/completions", json=CHAT))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert [r.status_code for r in results] == [200] * 4
    assert [len(b) for b in backend.batches] == [4]


def test_different_sampling_settings_run_as_separate_groups(make_client, backend):
    results = []
    bodies = [CHAT, CHAT, {**CHAT, "temperature": 0.7, "seed": 1}]
    with make_client(max_batch=3, batch_window_ms=3000) as client:
        threads = [threading.Thread(target=lambda b=b: results.append(client.post("/v1/chat/completions", json=b))) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert sorted(len(b) for b in backend.batches) == [1, 2]
    assert {b[0].settings.temperature for b in backend.batches} == {0.0, 0.7}


def test_gate_refuses_out_of_domain_without_calling_the_model(make_client, backend, caplog):
    off_topic = {"messages": [{"role": "user", "content": "Who won the World Cup?"}]}
    with caplog.at_level(logging.INFO, logger="honed.serve"), make_client(gate=FakeGate()) as client:
        refused = client.post("/v1/chat/completions", json=off_topic).json()
        streamed = client.post("/v1/chat/completions", json={**off_topic, "stream": True})
        answered = client.post("/v1/chat/completions", json=CHAT).json()
    assert refused["choices"][0]["message"]["content"] == "I can only help with clinical laboratory questions."
    assert refused["choices"][0]["finish_reason"] == "stop"
    assert refused["honed"] == {"gate": {"in_domain": False, "score": 0.12, "threshold": 0.4}}
    events = sse_events(streamed.text)
    assert events[0]["honed"]["gate"]["in_domain"] is False
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "I can only help with clinical laboratory questions."
    assert answered["choices"][0]["message"]["content"] == "Hello there, friend."
    assert answered["honed"] == {"gate": {"in_domain": True, "score": 0.9, "threshold": 0.4}}
    assert len(backend.batches) == 1  # only the in-domain question reached the model
    assert "gate: out of domain (score 0.120 < threshold 0.400)" in caplog.text


def test_gate_applies_to_completions_too(make_client, backend):
    with make_client(gate=FakeGate()) as client:
        body = client.post("/v1/completions", json={"prompt": "Tell me a joke", "max_tokens": 4}).json()
    assert body["choices"][0]["text"] == "I can only help with clinical laboratory questions."
    assert body["honed"]["gate"]["in_domain"] is False and backend.batches == []


def test_knowledge_base_passages_reach_the_model_and_citations_the_client(make_client, backend):
    kb = FakeKB()
    with make_client(kb=KnowledgeRetriever(kb, k=2, build_messages=fake_build_rag)) as client:
        body = client.post("/v1/chat/completions", json=CHAT).json()
    assert kb.queries == [("What is TSH?", 2)]
    assert [(m.role, m.content) for m in backend.messages[0]] == [("system", "Context:\nTSH is made by the pituitary."), ("user", "What is TSH?")]
    assert body["honed"] == {"citations": [{"source": "thyroid.md", "location": "line 3", "score": 0.83}]}


def test_openai_client_reads_the_honed_field(make_client):
    """The official client keeps fields it does not know, so `honed` is readable from `model_extra`."""
    import openai

    with make_client(gate=FakeGate()) as client:
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)
        refused = oai.chat.completions.create(model="honed", messages=[{"role": "user", "content": "Weather tomorrow?"}])
    assert refused.choices[0].message.content == "I can only help with clinical laboratory questions."
    assert refused.model_extra["honed"]["gate"] == {"in_domain": False, "score": 0.12, "threshold": 0.4}
