"""Evaluation records → `EvalSample`: the prompt to answer, its reference, split and label.

Any record `honed generate` reads works here ({"prompt"}, {"instruction", "input", "output"},
{"messages"}/{"conversations"} whose trailing assistant turn is the reference). A record that
cannot be used at all (no prompt) stops with its file:line; a record without a reference is
kept and reported per sample ("missing reference") by every metric that needs one.

>>> import json, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "e.jsonl")
>>> _ = open(p, "w").write(json.dumps({"prompt": "2+2?", "reference": "4", "kind": "in_domain"}) + "\\n")
>>> [(s.prompt_text, s.reference, s.split) for s in load_samples(EvalData(path=p))]
[('2+2?', '4', 'in_domain')]
"""

from __future__ import annotations

from honed.data.kinds import domain_split

from dataclasses import dataclass, field

from honed.data.conversation import Conversation, Message
from honed.data.dataset import scope_prompt
from honed.data.readers import read_records
from honed.errors import DataError
from honed.eval.config import EvalData
from honed.eval.metrics.refusal import SPLITS

@dataclass
class EvalSample:
    """One evaluation item. `conversation` ends with the user turn to answer."""

    index: int
    id: str
    source: str
    conversation: Conversation
    reference: str | None
    split: str | None = None
    label: str | None = None
    gate_decision: object = None  # the record's `refusal.decision_field` value, if configured
    problems: list[str] = field(default_factory=list)  # data problems, reported per sample

    @property
    def prompt_text(self) -> str:
        return self.conversation.messages[-1].content

    def with_reference(self) -> Conversation | None:
        """The conversation with the reference as the assistant's answer (for loss), or None."""
        if self.reference is None or not str(self.reference).strip():
            return None
        return Conversation([*self.conversation.messages, Message("assistant", str(self.reference))],
                            source=self.source)


def _normal_split(value) -> tuple[str | None, str | None]:
    if value is None or value == "":
        return None, None
    name = domain_split(value)
    if name is not None:
        return name, None
    return None, f"split {value!r} is not one of {', '.join(SPLITS)}; sample left out of domain metrics"


def _conversation(record: dict, where: str, system: str | None) -> tuple[Conversation, str | None]:
    from honed.data.prompts import prompt_conversation

    conv, reference = prompt_conversation(record, where, system)
    if record.get("reference") is not None and reference is None:
        reference = record["reference"]
    if not conv.messages or conv.messages[-1].role != "user":
        raise DataError(f"{where}: the conversation must end with a user turn to answer "
                        "(optionally followed by one assistant turn: the reference)")
    return conv, None if reference is None else str(reference)


def load_samples(data: EvalData, decision_field: str | None = None) -> list[EvalSample]:
    """Read the evaluation file into samples (the scope prompt first in each conversation).

    Raises DataError naming file:line for a record with no prompt, and when the file is empty.
    """
    system = scope_prompt(data)
    samples: list[EvalSample] = []
    for where, record in read_records(data.path):
        if data.max_samples and len(samples) >= data.max_samples:
            break
        conv, reference = _conversation(record, where, system)
        split, split_problem = _normal_split(record.get(data.split_field))
        label = record.get(data.label_field)
        sample = EvalSample(
            index=len(samples), id=str(record.get(data.id_field, len(samples))), source=where,
            conversation=conv, reference=reference, split=split,
            label=None if label is None else str(label),
            gate_decision=record.get(decision_field) if decision_field else None,
        )
        if split_problem:
            sample.problems.append(split_problem)
        if reference is None or not reference.strip():
            sample.problems.append("missing reference")
        samples.append(sample)
    if not samples:
        raise DataError(f"{data.path}: no evaluation records")
    return samples
