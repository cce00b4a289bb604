"""The transformers backend on the shipped tiny model: a batch answers as single requests do, and a
stream adds up to the non-streamed answer."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from honed.data.conversation import Message
from honed.infer.generate import GenerationSettings
from honed.serve.backends import HFBackend, Job

QUESTIONS = ["What is TSH?", "Do I need to fast for a lipid panel?", "血常规查什么？"]


@pytest.fixture(scope="module")
def backend():
    return HFBackend.load(str(resources.files("honed") / "resources" / "tiny_base"), device="cpu")


def test_one_batch_answers_as_one_request_at_a_time(backend):
    limits = [8, 3, 6]
    jobs = [Job(backend.chat_prompt([Message("user", q)]), GenerationSettings(max_new_tokens=n)) for q, n in zip(QUESTIONS, limits)]
    batched = backend.run(jobs)
    for q, n, got in zip(QUESTIONS, limits, batched):
        alone = backend.bot.reply([Message("user", q)], GenerationSettings(max_new_tokens=n))  # honed chat's path
        assert (got.text, got.new_tokens) == (alone.text, alone.new_tokens)
        assert got.finish_reason == ("stop" if alone.finished else "length")


def test_streamed_answer_equals_the_answer(backend):
    from fastapi.testclient import TestClient

    from honed.serve.app import create_app
    from honed.serve.settings import ServeSettings

    chat = {"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 8}
    with TestClient(create_app(backend, settings=ServeSettings())) as client:
        whole = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        lines = client.post("/v1/chat/completions", json={**chat, "stream": True}).text.split("\n\n")
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert whole and streamed == whole
