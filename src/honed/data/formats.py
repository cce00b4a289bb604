"""Alpaca, ShareGPT and OpenAI-messages records → Conversation.

The format is detected from a record's keys (`detect_format`) or set per file. Every problem
names the record's location and the field.

>>> to_conversation({"instruction": "What is TSH?", "output": "Thyroid-stimulating hormone."}, "alpaca", "x:1").roles()
['user', 'assistant']
"""

from __future__ import annotations

from honed.data.conversation import Conversation, Message
from honed.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai")

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
}


def detect_format(record: dict, where: str) -> str:
    """Guess a record's format from its keys."""
    if "messages" in record or "conversations" in record:
        turns = record.get("messages", record.get("conversations"))
        if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "from" in turns[0]:
            return "sharegpt"
        return "openai" if "messages" in record else "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    keys = ", ".join(sorted(record)) or "none"
    raise DataError(
        f"{where}: cannot tell the data format from the keys ({keys}); expected Alpaca "
        "(instruction/input/output), ShareGPT (conversations with from/value) or OpenAI "
        "(messages with role/content) — or set `format:` for this file"
    )


def to_conversation(record: dict, fmt: str, where: str) -> Conversation:
    """Convert one record of a known format into a Conversation; extra keys go to `meta`."""
    if fmt == "alpaca":
        messages, used = _from_alpaca(record, where)
    elif fmt == "sharegpt":
        messages, used = _from_sharegpt(record, where)
    elif fmt == "openai":
        messages, used = _from_openai(record, where)
    else:
        raise DataError(f"{where}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    _check_turns(messages, where)
    meta = {k: v for k, v in record.items() if k not in used}
    return Conversation(messages, source=where, meta=meta, origin=(fmt, record))


def _text(value, where: str, field: str, *, required: bool = True, parts_ok: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from CSV/Parquet
        if required:
            raise DataError(f"{where}: field '{field}' is missing")
        return ""
    if isinstance(value, list) and parts_ok:  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
                parts.append(str(part["text"]))
            else:
                raise DataError(f"{where}: field '{field}' has a non-text content part; only text is supported")
        return "".join(parts)
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{field}' must be text, got {type(value).__name__}")
    return str(value)


def _assistant(content: str, reasoning: str | None) -> Message:
    # `<think>…</think>` inside the answer is the Qwen3 way of storing reasoning; keep it apart.
    if reasoning is None and "<think>" in content:
        from honed.data.templates import split_thinking

        reasoning, content = split_thinking(content)
    return Message("assistant", content, reasoning)


def _from_alpaca(record: dict, where: str) -> tuple[list[Message], set[str]]:
    instruction = _text(record.get("instruction"), where, "instruction")
    extra = _text(record.get("input"), where, "input", required=False)
    output = _text(record.get("output"), where, "output")
    messages: list[Message] = []
    system = _text(record.get("system"), where, "system", required=False)
    if system:
        messages.append(Message("system", system))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: field 'history[{i}]' must be a [question, answer] pair")
        messages.append(Message("user", _text(pair[0], where, f"history[{i}][0]")))
        messages.append(_assistant(_text(pair[1], where, f"history[{i}][1]"), None))
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    messages.append(Message("user", prompt))
    messages.append(_assistant(output, None))
    return messages, {"instruction", "input", "output", "system", "history"}


def _from_sharegpt(record: dict, where: str) -> tuple[list[Message], set[str]]:
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of {{from, value}} turns")
    messages: list[Message] = []
    system = _text(record.get("system"), where, "system", required=False)
    if system:
        messages.append(Message("system", system))
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict) or "from" not in turn:
            raise DataError(f"{where}: field '{field}' must be an object with 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(
                f"{where}: field '{field}.from' is {turn['from']!r}; supported: {', '.join(sorted(_SHAREGPT_ROLES))}"
            )
        text = _text(turn.get("value"), where, f"{field}.value")
        messages.append(_assistant(text, None) if role == "assistant" else Message(role, text))
    return messages, {key, "system"}


def _from_openai(record: dict, where: str) -> tuple[list[Message], set[str]]:
    turns = record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} messages")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        field = f"messages[{i}]"
        if not isinstance(turn, dict) or "role" not in turn:
            raise DataError(f"{where}: field '{field}' must be an object with 'role' and 'content'")
        role = str(turn["role"])
        if role == "developer":  # newer OpenAI name for the system role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: field '{field}.role' is {role!r}; supported roles: system, user, assistant")
        text = _text(turn.get("content"), where, f"{field}.content", parts_ok=True)
        if role == "assistant":
            reasoning = turn.get("reasoning_content", turn.get("reasoning"))
            messages.append(_assistant(text, None if reasoning is None else _text(reasoning, where, f"{field}.reasoning_content")))
        else:
            messages.append(Message(role, text))
    return messages, {"messages"}


def empty_answer(conv: Conversation) -> str | None:
    """Why a conversation has an empty answer (an assistant turn with no text), or None."""
    dialogue = [m for m in conv.messages if m.role != "system"]
    for i, m in enumerate(dialogue):
        if m.role == "assistant" and not m.content.strip():
            return f"assistant turn {i + 1} is empty"
    return None


def check_answers(conv: Conversation, where: str) -> None:
    """Refuse a training record with an empty answer: the model would learn to answer nothing."""
    why = empty_answer(conv)
    if why:
        raise DataError(f"{where}: {why}: a model trained on it learns to answer nothing; write the answer or drop the "
                        "record (`honed data filter` removes such records)")


def _check_turns(messages: list[Message], where: str) -> None:
    roles = [m.role for m in messages]
    if "system" in roles[1:]:
        raise DataError(f"{where}: a system message may only come first (found at turn {roles.index('system', 1)})")
    dialogue = roles[1:] if roles[0] == "system" else roles
    if not dialogue or dialogue[0] != "user":
        raise DataError(f"{where}: the conversation must start with a user turn (after an optional system turn)")
    for i, (a, b) in enumerate(zip(dialogue, dialogue[1:])):
        if a == b:
            raise DataError(f"{where}: two {a} turns in a row at turn {i + 1}; user and assistant must alternate")
