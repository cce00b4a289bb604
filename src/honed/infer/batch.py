"""`honed generate`: JSONL prompts in, JSONL answers out, written atomically.

Each input line is `{"prompt": ...}`, `{"instruction": ..., "input": ...}` or `{"messages": [...]}`
(a trailing assistant turn, if any, is dropped and kept as the reference).
"""

from __future__ import annotations

import json
from pathlib import Path

from honed.data.conversation import Conversation, Message
from honed.data.readers import read_records
from honed.errors import DataError, OutputExistsError
from honed.utils.fs import write_text_atomic


def prompt_conversation(record: dict, where: str, system: str | None = None) -> tuple[Conversation, str | None]:
    """The conversation to answer and its reference answer (if the record has one)."""
    reference = None
    if "messages" in record or "conversations" in record:
        from honed.data.formats import detect_format, to_conversation

        turns = list(record.get("messages") or record.get("conversations"))
        last = turns[-1] if turns else {}
        if last.get("role", last.get("from")) in ("assistant", "gpt", "model"):
            reference = last.get("content", last.get("value"))
            turns = turns[:-1]
        key = "messages" if "messages" in record else "conversations"
        fake = {key: turns + [{"role": "assistant", "content": "", "from": "gpt", "value": ""}]}
        conv = to_conversation(fake, detect_format(fake, where), where)
        conv.messages.pop()
    elif "prompt" in record or "instruction" in record:
        text = record.get("prompt") or record["instruction"]
        if record.get("input"):
            text = f"{text}\n\n{record['input']}"
        conv = Conversation([Message("user", str(text))], source=where)
        reference = record.get("output") or record.get("reference")
    else:
        raise DataError(f"{where}: expected a 'prompt', 'instruction' or 'messages' field")
    if system:
        conv = conv.with_system(system)
    return conv, reference


def generate_file(bot, input_path, output_path, settings, *, system=None, batch_size=8, overwrite=False) -> int:
    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise OutputExistsError(f"{output_path} exists; pass --overwrite to replace it")
    records, conversations = [], []
    for where, record in read_records(input_path):
        conv, reference = prompt_conversation(record, where, system)
        records.append((record, reference))
        conversations.append(conv)
    if not conversations:
        raise DataError(f"{input_path}: no prompts")
    from rich.progress import track

    replies = []
    chunks = range(0, len(conversations), batch_size)
    for start in track(chunks, description="generate", disable=len(chunks) < 2, transient=True):
        replies += bot.generate(conversations[start : start + batch_size], settings, batch_size=batch_size)
    lines = []
    for (record, reference), reply in zip(records, replies):
        row = dict(record, response=reply.text, finished=reply.finished, new_tokens=reply.new_tokens)
        if reply.reasoning is not None:
            row["reasoning"] = reply.reasoning
        if reference is not None:
            row["reference"] = reference
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(output_path, "\n".join(lines) + "\n")
    return len(lines)
