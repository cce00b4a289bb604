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


def generate_file(bot, input_path, output_path, settings, *, system=None, batch_size=8, overwrite=False, retrieve=None,
                  gate=None, query_log=None) -> int:
    """Answer every record of `input_path` with `bot`; write them with `response` to `output_path`.

    With a `gate`, records whose question it refuses get the gate's refusal (and a `gate` field
    with score and threshold) without reaching `bot`. `retrieve(messages) -> (messages, sources)`,
    if given (`--kb`), rewrites each prompt that passed the gate before generation (passages put
    in) and the row records its `sources`."""
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
    sources = [None] * len(conversations)
    if retrieve is not None:
        for i in passed:
            conversations[i].messages, sources[i] = retrieve(conversations[i].messages)
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
            if getattr(reply, "refusal_probability", None) is not None:  # with --refusal-calibration (a duck-typed bot may lack it)
                row["refusal_probability"] = round(reply.refusal_probability, 6)
        if sources[i] is not None:
            row["sources"] = sources[i]
        if decisions is not None:
            row["gate"] = decisions[i].as_dict()
        if reference is not None:
            row["reference"] = reference
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(output_path, "\n".join(lines) + "\n")
    return len(lines)
