"""Reading data files into Conversations and writing them back as JSONL, for the `honed data` verbs.

Extra record keys (label, category, id, …) travel in `meta` and are written back, so a file read,
augmented and written keeps everything honed and the user put in it; a record left unchanged is
written exactly as it was read, and an Alpaca record stays Alpaca.

>>> import tempfile, os
>>> from honed.data import Conversation, Message
>>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
>>> write_conversations(p, [Conversation([Message("user", "hi"), Message("assistant", "yo")], meta={"label": "x"})])
1
>>> [c.meta["label"] for c in read_conversations([p])]
['x']
"""

from __future__ import annotations

import json
from pathlib import Path

from honed.data.conversation import Conversation
from honed.utils.fs import check_writable, write_text_atomic


def read_conversations(paths, system_prompt: str | None = None, allow_empty_answers: bool = False) -> list[Conversation]:
    """Every record of every file (any format honed reads), in file order; a bad record is an error."""
    from honed.config import DataSource
    from honed.data.dataset import DataReport, load_source

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    report = DataReport()
    return [c for p in paths for c in load_source(DataSource(path=str(p)), "error", report, system_prompt,
                                                        allow_empty_answers, hint=None)]


def conversation_record(conv: Conversation, keep_meta: bool = True) -> dict:
    """The record to write for a conversation; private meta keys (`_…`) are dropped.

    A record read from a file and not changed comes back exactly as it was read (an Alpaca record
    stays Alpaca); a changed Alpaca record stays Alpaca when it still has its shape (one question,
    one answer); anything else is `{**meta, "messages": [...]}`, the OpenAI form honed reads back."""
    meta = {k: v for k, v in conv.meta.items() if not k.startswith("_")} if keep_meta else {}
    if keep_meta and conv.origin is not None:
        fmt, raw = conv.origin
        if _unchanged(conv, fmt, raw):
            return {**raw, **meta}
        if fmt == "alpaca":
            alpaca = _as_alpaca(conv, raw)
            if alpaca is not None:
                return {**alpaca, **meta}
    return {**meta, **conv.to_dict()}


def _unchanged(conv: Conversation, fmt: str, raw: dict) -> bool:
    from honed.data.formats import to_conversation

    try:
        again = to_conversation(raw, fmt, conv.source)
    except Exception:  # noqa: BLE001 - a record that no longer converts is simply not "unchanged"
        return False
    turns = lambda c: [(m.role, m.content, m.reasoning) for m in c.messages]  # noqa: E731
    return turns(again) == turns(conv)


def _as_alpaca(conv: Conversation, raw: dict) -> dict | None:
    """An edited Alpaca record in Alpaca form: the instruction (and input, when the instruction is
    still its start), output, system; None when the conversation lost that shape."""
    messages = list(conv.messages)
    system = messages.pop(0).content if messages and messages[0].role == "system" else None
    if raw.get("history") or [m.role for m in messages] != ["user", "assistant"] or messages[1].reasoning is not None:
        return None
    prompt, answer = messages[0].content, messages[1].content
    out = {k: v for k, v in raw.items() if k not in ("instruction", "input", "output", "system")}
    instruction = str(raw.get("instruction", ""))
    if raw.get("input") and prompt.startswith(instruction + "\n\n"):
        out.update(instruction=instruction, input=prompt[len(instruction) + 2:])
    else:
        out["instruction"] = prompt
    out["output"] = answer
    if system:
        out["system"] = system
    return out


def write_conversations(path, conversations, *, overwrite: bool = False, keep_meta: bool = True) -> int:
    """Write JSONL atomically (a reader sees the old file or the new one); returns the count."""
    path = check_writable(path, overwrite)
    lines = [json.dumps(conversation_record(c, keep_meta), ensure_ascii=False) for c in conversations]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
