"""The one message format every data file is converted into before anything else happens."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    """One turn of a conversation.

    `reasoning` holds a model's thinking (Qwen3 `<think>` content) apart from the answer, so
    templates can render it or drop it.

    >>> Message("user", "What is HbA1c?").role
    'user'
    """

    role: str
    content: str
    reasoning: str | None = None


@dataclass
class Conversation:
    """A list of messages plus where it came from (used in every error about it).

    >>> c = Conversation([Message("user", "hi"), Message("assistant", "hello")], source="a.jsonl:3")
    >>> c.roles()
    ['user', 'assistant']
    """

    messages: list[Message]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)
    # (format, record) it was read from: lets a writer give back a record in its own form
    # (`honed data filter` keeps Alpaca records Alpaca). Not part of equality.
    origin: tuple[str, dict] | None = field(default=None, repr=False, compare=False)

    def roles(self) -> list[str]:
        return [m.role for m in self.messages]

    def with_system(self, prompt: str) -> "Conversation":
        """Return a copy whose first message is the given system prompt (replacing any system turn)."""
        rest = [m for m in self.messages if m.role != "system"]
        return Conversation([Message("system", prompt), *rest], source=self.source, meta=dict(self.meta), origin=self.origin)

    def to_dict(self) -> dict:
        """Plain OpenAI-style dict, the form honed writes conversations in."""
        out = []
        for m in self.messages:
            d = {"role": m.role, "content": m.content}
            if m.reasoning is not None:
                d["reasoning_content"] = m.reasoning
            out.append(d)
        return {"messages": out}
