"""The gate and the knowledge base as the server uses them (both optional, both imported lazily).

- A gate has `check(text) -> decision` (with `in_domain`, `score`, `threshold`) and
  `refusal_for(text) -> str`: an out-of-domain question gets the refusal as the answer.
- A knowledge retriever has `augment(messages, question) -> (messages, citations)`: the passages
  found for the question go into the conversation, and their sources back to the client.
"""

from __future__ import annotations

import logging

from honed.data.conversation import Message
from honed.errors import ConfigError

log = logging.getLogger(__name__)


class LoggedGate:
    """A gate whose every decision is logged (and appended to `--guard-log`, the input of `honed guard drift`)."""

    def __init__(self, gate, query_log):
        self.gate, self.query_log = gate, query_log

    def check(self, text: str):
        decision = self.gate.check(text)
        self.query_log.write(text, decision, source="serve")
        return decision

    def refusal_for(self, text: str) -> str:
        return self.gate.refusal_for(text)


def load_gate(path: str, log_path: str | None = None) -> LoggedGate:
    """The out-of-domain gate fitted by `honed guard fit` into `path`, logging its decisions."""
    try:
        from honed.guard.gate import load_gate as load
    except ImportError as err:
        raise ConfigError(f"--guard {path}: the gate module is not available in this install ({err})") from None
    from honed.infer.gating import QueryLog

    return LoggedGate(load(path), QueryLog(log_path))


def gate_fields(decision) -> dict:
    """The gate's decision as it appears in a response's `honed.gate` field."""
    return {"in_domain": bool(decision.in_domain), "score": round(float(decision.score), 4), "threshold": round(float(decision.threshold), 4)}


def _as_message(m) -> Message:
    if isinstance(m, Message):
        return m
    return Message(m["role"], m.get("content") or "", m.get("reasoning_content"))


class KnowledgeRetriever:
    """Top-k passages from a knowledge base, put into the conversation by `build_messages`."""

    def __init__(self, kb, k: int = 4, build_messages=None):
        self.kb, self.k = kb, k
        self._build = build_messages

    @classmethod
    def open(cls, path: str, k: int = 4) -> "KnowledgeRetriever":
        """Open the knowledge-base folder at `path` (honed.guard.knowledge)."""
        try:
            from honed.guard.knowledge import KnowledgeBase
        except ImportError as err:
            raise ConfigError(f"--kb {path}: the knowledge-base module is not available in this install ({err})") from None
        return cls(KnowledgeBase.open(path), k)

    def augment(self, messages: list[Message], question: str) -> tuple[list[Message], list[dict]]:
        """The conversation with the retrieved passages added, and their citations."""
        passages = self.kb.search(question, self.k)
        if not passages:
            return messages, []
        build = self._build
        if build is None:
            from honed.guard.knowledge import build_rag_messages as build
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        augmented = [_as_message(m) for m in build(as_dicts, passages)]
        citations = [{"source": str(p.source), "location": getattr(p, "location", None), "score": round(float(p.score), 4)} for p in passages]
        return augmented, citations
