"""A record to answer: the prompt conversation and, when the record has one, its reference answer.

Used wherever a model answers data records (generation, evaluation, preference pairs), so prompts
reach the model exactly as training rendered them.
"""

from __future__ import annotations

from honed.data.conversation import Conversation
from honed.data.dataset import inject_system_prompt
from honed.data.formats import detect_format, to_conversation
from honed.errors import DataError


def prompt_conversation(record: dict, where: str, system: str | None = None) -> tuple[Conversation, str | None]:
    """The conversation to answer and its reference answer (if the record has one).

    Records go through the same converters as training data, so a record's own system prompt,
    Alpaca `history` and `input` reach the model exactly as they did in training; `system` (a
    scope prompt) goes first, as training puts it.
    """
    if "messages" in record or "conversations" in record:
        key = "messages" if "messages" in record else "conversations"
        turns = list(record.get(key) or [])
        last = turns[-1] if turns and isinstance(turns[-1], dict) else {}
        reference = None
        if last.get("role", last.get("from")) in ("assistant", "gpt", "model"):
            reference = last.get("content", last.get("value"))
            turns = turns[:-1]
        # A placeholder answer lets the training converter check the turns; it is removed again.
        fake = {**record, key: turns + [{"role": "assistant", "content": "", "from": "gpt", "value": ""}]}
        fmt = detect_format(fake, where)
    elif "instruction" in record:
        reference = record.get("output") or record.get("reference")
        fake, fmt = {**record, "output": ""}, "alpaca"
    elif "prompt" in record:
        reference = record.get("reference") or record.get("output")
        fake, fmt = {"messages": [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": ""}]}, "openai"
    else:
        raise DataError(f"{where}: expected a 'prompt', 'instruction' or 'messages' field")
    conv = to_conversation(fake, fmt, where)
    conv.messages.pop()
    return inject_system_prompt(conv, system), reference
