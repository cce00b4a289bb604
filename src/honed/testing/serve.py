"""Fakes for testing the server without a model: a character-level backend, a gate, a knowledge base."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from honed.guard.knowledge.store import Passage
from honed.serve.backends import emit
from honed.serve.rowtext import RowText

STOP = 0  # the fake's end-of-turn token


class CharBackend:
    """Prompts are characters; every answer is `reply` (one token per character), then STOP."""

    name = "fake"
    supports_batching = True

    def __init__(self, reply: str = "Hello there, friend."):
        self.reply = reply
        self.batches: list[list] = []  # the jobs of each run() call
        self.messages: list[list] = []  # the messages each chat prompt was built from
        self.gate = threading.Event()  # cleared: run() waits (to hold requests in flight)
        self.gate.set()
        self.started = threading.Event()

    def chat_prompt(self, messages, enable_thinking=None):
        self.messages.append(messages)
        return [ord(c) for m in messages for c in f"{m.role}:{m.content}|"]

    def text_prompt(self, text):
        return [ord(c) for c in text]

    def run(self, jobs):
        self.batches.append(jobs)
        self.started.set()
        self.gate.wait(10)
        rows = [RowText(lambda ids: "".join(map(chr, ids)), stop_ids=[STOP], stop_strings=j.stop,
                        max_tokens=j.settings.max_new_tokens, chat=j.chat) for j in jobs]
        for token in [*map(ord, self.reply), STOP]:
            for job, row in zip(jobs, rows):
                if not row.done:
                    row.feed(token)
                    emit(job, row)
        return [row.result() for row in rows]


@dataclass
class Decision:
    in_domain: bool
    score: float
    threshold: float


class FakeGate:
    """In domain when the text mentions a lab word."""

    def check(self, text):
        score = 0.9 if any(w in text.lower() for w in ("tsh", "glucose", "lab")) else 0.12
        return Decision(score >= 0.4, score, 0.4)

    def refusal_for(self, text):
        return "I can only help with clinical laboratory questions."


class FakeKB:
    def __init__(self):
        self.queries = []

    def search(self, query, k):
        self.queries.append((query, k))
        return [Passage("TSH is made by the pituitary.", "thyroid.md", "line 3", 0.83)][:k]


def fake_build_rag(messages, passages):
    """Stands in for honed.guard.knowledge.build_rag_messages: context first, as a system turn."""
    context = "\n".join(p.text for p in passages)
    return [{"role": "system", "content": f"Context:\n{context}"}, *[m for m in messages if m["role"] != "system"]]
