"""Questions for the gate from any data file honed reads (their user turns) or plain text, one per line.

Records whose `kind` names a domain split (honed.data.kinds: in_domain, out_of_domain, refusal,
hard_negative, ... as the sample data has) are sorted by it: asking for in-domain questions skips the others, and the skipped count is reported.
Query logs written by `chat`/`generate --guard-log` (`{"text": ...}` lines) read the same way.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "q.txt")
>>> _ = open(p, "w", encoding="utf-8").write("What is TSH?\\n\\n血糖检测需要空腹吗？\\n")
>>> read_questions(p).texts
['What is TSH?', '血糖检测需要空腹吗？']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from honed.data.kinds import SHOULD_ANSWER, domain_split
from honed.errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Questions:
    texts: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def describe_skips(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))


def _user_turns(record: dict, where: str) -> list[str]:
    from honed.data.prompts import prompt_conversation

    if isinstance(record.get("text"), str) and not any(k in record for k in ("messages", "conversations", "instruction", "prompt")):
        return [record["text"]]  # a query log line
    conv, _ = prompt_conversation(record, where)
    return [m.content for m in conv.messages if m.role == "user" and m.content.strip()]


def read_questions(path: str | Path, kind: str | None = None) -> Questions:
    """User turns of a data file (or lines of a text file); `kind` keeps only records marked so
    (records without a `kind` field are always kept)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out = Questions()
    if path.is_dir() or path.suffix.lower() in DATA_SUFFIXES:
        from honed.data.readers import read_records

        for where, record in read_records(path):
            marked = domain_split(record.get("kind"))
            # Hard negatives belong to the domain: an in-domain gate indexes them too.
            if kind and marked is not None and (marked in SHOULD_ANSWER) != (domain_split(kind) in SHOULD_ANSWER):
                out.skip(f"records marked kind={record.get('kind')}")
                continue
            turns = _user_turns(record, where)
            if not turns:
                out.skip("records without a user turn")
            out.texts += turns
    else:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); give a UTF-8 file, one question per line") from None
        out.texts = [line.strip() for line in lines if line.strip()]
    return out
