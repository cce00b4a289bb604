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


def test_a_cancelled_row_stops_while_its_batch_goes_on(backend, monkeypatch):
    steps = []
    generate = backend.bot.model.generate

    def counted(*args, **kwargs):
        out = generate(*args, **kwargs)
        steps.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(backend.bot.model, "generate", counted)
    prompts = [backend.chat_prompt([Message("user", q)]) for q in QUESTIONS[:2]]
    gone = Job(prompts[0], GenerationSettings(max_new_tokens=200))
    gone.on_delta = lambda reasoning, text: gone.cancelled.set()  # the client leaves after its first text
    stays = Job(prompts[1], GenerationSettings(max_new_tokens=5))
    cancelled, finished = backend.run([gone, stays])
    assert cancelled.finish_reason == "cancelled" and cancelled.new_tokens <= 3
    alone = backend.bot.reply([Message("user", QUESTIONS[1])], GenerationSettings(max_new_tokens=5))
    assert (finished.text, finished.new_tokens) == (alone.text, alone.new_tokens)
    assert steps[0] == 5  # the batch ended with the row that stayed, not after the cancelled row's 200


def test_a_real_gate_refuses_out_of_domain_without_the_model_and_logs_it(backend, tmp_path, monkeypatch):
    """The server with a gate fitted by honed.guard (the default embedders, on the sample's in-domain questions):
    an off-topic request gets the gate's refusal as a normal completion, with the decision in the
    `honed.gate` field and the query log, and generation never runs for it."""
    from fastapi.testclient import TestClient

    from honed.guard.fit import fit_gate
    from honed.guard.questions import read_questions
    from honed.serve.app import create_app
    from honed.serve.domain import load_gate
    from honed.serve.settings import ServeSettings

    sample = resources.files("honed") / "resources" / "sample_data" / "clinical_lab_train.jsonl"
    questions = read_questions(str(sample), kind="in_domain").texts
    fit_gate(questions, tmp_path / "gate", refusal="Sorry, I only answer clinical-lab questions.")
    log = tmp_path / "queries.jsonl"
    gate = load_gate(str(tmp_path / "gate"), str(log))
    ran = []
    monkeypatch.setattr(backend, "run", lambda jobs, *a, **k: ran.append(jobs) or HFBackend.run(backend, jobs, *a, **k))
    with TestClient(create_app(backend, gate=gate, settings=ServeSettings())) as client:
        refused = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Who won the football world cup in 1998?"}],
                                                           "max_tokens": 8}).json()
    assert refused["choices"][0]["message"]["content"] == "Sorry, I only answer clinical-lab questions."
    decision = refused["honed"]["gate"]
    assert decision["in_domain"] is False and decision["score"] < decision["threshold"]
    assert ran == []  # the model never generated for the refused request
    logged = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(row["source"], row["text"], row["in_domain"]) for row in logged] == [("serve", "Who won the football world cup in 1998?", False)]
