"""`honed generate`: JSONL prompts in, JSONL answers out, written atomically.

Each input line is `{"prompt": ...}`, `{"instruction": ..., "input": ...}` or `{"messages": [...]}`
(a trailing assistant turn, if any, is dropped and kept as the reference).
"""

from __future__ import annotations

import json

from honed.data.conversation import Conversation
from honed.data.readers import read_records
from honed.errors import DataError
from honed.utils.fs import check_writable, write_text_atomic


def prompt_conversation(record: dict, where: str, system: str | None = None) -> tuple[Conversation, str | None]:
    """The conversation to answer and its reference answer (if the record has one).

    Records go through the same converters as training data, so a record's own system prompt,
    Alpaca `history` and `input` reach the model exactly as they did in training; `system` (a
    scope prompt) goes first, as training puts it.
    """
    from honed.data.dataset import inject_system_prompt
    from honed.data.formats import detect_format, to_conversation

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


def generate_file(bot, input_path, output_path, settings, *, system=None, batch_size=8, overwrite=False, gate=None, query_log=None) -> int:
    """Answer every record of `input_path` with `bot`; write them with `response` to `output_path`.

    With a `gate`, records whose question it refuses get the gate's refusal (and a `gate` field
    with score and threshold) without reaching `bot`."""
    output_path = check_writable(output_path, overwrite)
    records, conversations = [], []
    for where, record in read_records(input_path):
        conv, reference = prompt_conversation(record, where, system)
        records.append((record, reference))
        conversations.append(conv)
    if not conversations:
        raise DataError(f"{input_path}: no prompts")
    from rich.progress import track

    decisions = None
    if gate is not None:
        from honed.infer.gating import gate_conversations, last_user_text

        decisions = gate_conversations(gate, conversations, query_log, source="generate")
    passed = [i for i in range(len(conversations)) if decisions is None or decisions[i].in_domain]
    replies = [None] * len(conversations)
    chunks = range(0, len(passed), batch_size)
    for start in track(chunks, description="generate", disable=len(chunks) < 2, transient=True):
        rows = passed[start : start + batch_size]
        for i, reply in zip(rows, bot.generate([conversations[i] for i in rows], settings, batch_size=batch_size)):
            replies[i] = reply
    lines = []
    for i, ((record, reference), reply) in enumerate(zip(records, replies)):
        if reply is None:  # refused by the gate: its refusal, in the question's language
            row = dict(record, response=gate.refusal_for(last_user_text(conversations[i])), finished=True, new_tokens=0)
        else:
            row = dict(record, response=reply.text, finished=reply.finished, new_tokens=reply.new_tokens)
            if reply.reasoning is not None:
                row["reasoning"] = reply.reasoning
        if decisions is not None:
            row["gate"] = decisions[i].as_dict()
        if reference is not None:
            row["reference"] = reference
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(output_path, "\n".join(lines) + "\n")
    return len(lines)
