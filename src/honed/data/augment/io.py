"""Reading data files into Conversations and writing them back as JSONL, for the `honed data` verbs.

Extra record keys (label, category, input, …) travel in `meta` and are written back beside
`messages`, so a file read, augmented and written keeps everything honed and the user put in it.

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
    """`{**meta, "messages": [...]}`: the OpenAI-messages form honed reads back; private keys (`_…`) dropped."""
    meta = {k: v for k, v in conv.meta.items() if not k.startswith("_")} if keep_meta else {}
    return {**meta, **conv.to_dict()}


def write_conversations(path, conversations, *, overwrite: bool = False, keep_meta: bool = True) -> int:
    """Write JSONL atomically (a reader sees the old file or the new one); returns the count."""
    path = check_writable(path, overwrite)
    lines = [json.dumps(conversation_record(c, keep_meta), ensure_ascii=False) for c in conversations]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
