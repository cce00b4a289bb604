"""`honed generate`: JSONL prompts in, JSONL answers out, written atomically.

Each input line is `{"prompt": ...}`, `{"instruction": ..., "input": ...}` or `{"messages": [...]}`
(a trailing assistant turn, if any, is dropped and kept as the reference).
"""

from __future__ import annotations

import json

from honed.data.prompts import prompt_conversation
from honed.data.readers import read_records
from honed.errors import DataError
from honed.utils.fs import check_writable, write_text_atomic


def generate_file(bot, input_path, output_path, settings, *, system=None, batch_size=8, overwrite=False, retrieve=None) -> int:
    """Answer every record of `input_path` with `bot`; write them with `response` to `output_path`.

    `retrieve(messages) -> (messages, sources)`, if given (`--kb`), rewrites each prompt before
    generation (passages put in) and the row records its `sources`."""
    output_path = check_writable(output_path, overwrite)
    records, conversations = [], []
    for where, record in read_records(input_path):
        conv, reference = prompt_conversation(record, where, system)
        records.append((record, reference))
        conversations.append(conv)
    if not conversations:
        raise DataError(f"{input_path}: no prompts")
    sources = [None] * len(conversations)
    if retrieve is not None:
        for i, conv in enumerate(conversations):
            conv.messages, sources[i] = retrieve(conv.messages)
    from rich.progress import track

    replies = []
    chunks = range(0, len(conversations), batch_size)
    for start in track(chunks, description="generate", disable=len(chunks) < 2, transient=True):
        replies += bot.generate(conversations[start : start + batch_size], settings, batch_size=batch_size)
    lines = []
    for (record, reference), reply, cited in zip(records, replies, sources):
        row = dict(record, response=reply.text, finished=reply.finished, new_tokens=reply.new_tokens)
        if cited is not None:
            row["sources"] = cited
        if reply.reasoning is not None:
            row["reasoning"] = reply.reasoning
        if reference is not None:
            row["reference"] = reference
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(output_path, "\n".join(lines) + "\n")
    return len(lines)
