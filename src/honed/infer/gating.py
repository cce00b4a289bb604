"""The out-of-domain gate in front of generation: refused questions never reach the LLM.

Each decision is logged (logger `honed.guard`) and, with `--guard-log FILE`, appended to a JSON
lines query log, the file `honed guard drift --queries` reads.

The gate is passed in (duck-typed: `check_many`, `refusal_for`), so this layer does not import
`honed.guard`, which sits above it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("honed.guard")


class QueryLog:
    """Appends one JSON line per gate decision to `path` (nothing when `path` is None)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, text: str, decision, *, source: str) -> None:
        """Log one `GateDecision` (and append it to the file)."""
        log.info("gate %s score=%.4f threshold=%.4f route=%s: %s", "pass" if decision.in_domain else "refuse", decision.score, decision.threshold, decision.route, text[:80])
        if self.path is None:
            return
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source, "text": text, **decision.as_dict()}
        # Appending a whole line in one write keeps concurrent writers' lines intact.
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def last_user_text(conversation) -> str:
    """The question the gate judges: the conversation's last user turn."""
    return next((m.content for m in reversed(conversation.messages) if m.role == "user"), "")


def gate_conversations(gate, conversations, query_log: QueryLog | None, *, source: str) -> list:
    """Decide each conversation's last user turn, logging every decision."""
    texts = [last_user_text(c) for c in conversations]
    decisions = gate.check_many(texts)
    for text, decision in zip(texts, decisions):
        (query_log or QueryLog(None)).write(text, decision, source=source)
    return decisions
