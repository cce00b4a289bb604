"""Preference records → `PreferencePair` (DPO, ORPO, SimPO) and `KTOSample` (KTO).

Accepted pair records (detected from their keys, like the SFT formats; errors name `file:line`):

- strings: `{"prompt": "...", "chosen": "...", "rejected": "..."}` (optional `"system"`);
- Alpaca-style: `{"instruction", "input"?, "chosen", "rejected"}`;
- OpenAI messages: `{"prompt": [{role, content}, ...], "chosen": [{"role": "assistant", ...}] | "...", "rejected": ...}`,
  or without `prompt`: full `chosen`/`rejected` conversations that share every turn but the last;
- ShareGPT: `{"conversations": [{from, value}, ...], "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}`.

A prompt may hold many turns (multi-turn); the completion is one assistant answer. Unpaired KTO
records are `{"prompt", "completion", "label": true|false}` with the same prompt forms.

>>> pair = to_preference_pair({"prompt": "What is TSH?", "chosen": "A hormone.", "rejected": "No idea."}, "x:1")
>>> [m.role for m in pair.chosen_conversation().messages], pair.rejected[0].content
(['user', 'assistant'], 'No idea.')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from honed.data.conversation import Conversation, Message
from honed.data.formats import to_conversation
from honed.errors import DataError

PAIR_FORMATS = ("pairs", "alpaca_pairs", "openai_pairs", "sharegpt_pairs")
KTO_FORMAT = "kto"


@dataclass
class PreferencePair:
    """A prompt (one or more turns) with a preferred and a dispreferred assistant answer."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    def chosen_conversation(self) -> Conversation:
        return Conversation([*self.prompt, *self.chosen], source=self.source, meta=dict(self.meta))

    def rejected_conversation(self) -> Conversation:
        return Conversation([*self.prompt, *self.rejected], source=self.source, meta=dict(self.meta))

    def to_dict(self) -> dict:
        """The OpenAI-messages form honed writes pairs in."""
        return {
            "prompt": Conversation(self.prompt).to_dict()["messages"],
            "chosen": Conversation(self.chosen).to_dict()["messages"],
            "rejected": Conversation(self.rejected).to_dict()["messages"],
            **self.meta,
        }


@dataclass
class KTOSample:
    """A prompt and one answer marked desirable (True) or undesirable (False)."""

    prompt: list[Message]
    completion: list[Message]
    desirable: bool
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    def conversation(self) -> Conversation:
        return Conversation([*self.prompt, *self.completion], source=self.source, meta=dict(self.meta))


def detect_preference_format(record: dict, where: str) -> str:
    """Which preference layout a record uses, from its keys."""
    if "completion" in record and "label" in record:
        return KTO_FORMAT
    if "chosen" in record and "rejected" in record:
        if "conversations" in record:
            return "sharegpt_pairs"
        if "instruction" in record:
            return "alpaca_pairs"
        if isinstance(record.get("prompt"), list) or isinstance(record.get("chosen"), list):
            return "openai_pairs"
        return "pairs"
    keys = ", ".join(sorted(record)) or "none"
    raise DataError(
        f"{where}: cannot tell the preference format from the keys ({keys}); expected prompt/chosen/rejected "
        "(strings or OpenAI messages), instruction/chosen/rejected, conversations/chosen/rejected (ShareGPT), "
        "or prompt/completion/label for KTO"
    )


def to_preference_pair(record: dict, where: str, fmt: str | None = None) -> PreferencePair:
    """One record → PreferencePair; the prompt and both answers are checked like SFT conversations."""
    fmt = fmt or detect_preference_format(record, where)
    if fmt == "sharegpt_pairs":
        prompt = _sharegpt_prompt(record, where)
        chosen, rejected = (_sharegpt_answer(record.get(k), where, k) for k in ("chosen", "rejected"))
        used = {"conversations", "system", "chosen", "rejected"}
    elif fmt == "alpaca_pairs":
        prompt = to_conversation({**record, "output": ""}, "alpaca", where).messages[:-1]
        chosen, rejected = (_answer(record.get(k), where, k) for k in ("chosen", "rejected"))
        used = {"instruction", "input", "system", "history", "chosen", "rejected"}
    elif fmt in ("pairs", "openai_pairs"):
        prompt, chosen, rejected = _prompt_and_answers(record, where)
        used = {"prompt", "system", "chosen", "rejected"}
    elif fmt == KTO_FORMAT:
        raise DataError(f"{where}: this is a KTO record (prompt/completion/label); use objective: kto, or give chosen and rejected")
    else:
        raise DataError(f"{where}: unknown preference format {fmt!r}; use one of {', '.join(PAIR_FORMATS)}")
    pair = PreferencePair(prompt, chosen, rejected, where, {k: v for k, v in record.items() if k not in used})
    # Validate the full conversations exactly as SFT does (alternation, system first, user first).
    for conv in (pair.chosen_conversation(), pair.rejected_conversation()):
        to_conversation(conv.to_dict(), "openai", where)
    return pair


def to_kto_sample(record: dict, where: str) -> KTOSample:
    """One `{"prompt", "completion", "label"}` record → KTOSample."""
    label = record.get("label")
    if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):  # CSV cells are text
        label = label.lower() in ("true", "1")
    if not isinstance(label, (bool, int)) or label not in (0, 1, True, False):
        raise DataError(f"{where}: field 'label' must be true (desirable) or false (undesirable), got {label!r}")
    if "completion" not in record:
        raise DataError(f"{where}: field 'completion' is missing")
    prompt = _prompt(record, where)
    completion = _answer(record.get("completion"), where, "completion")
    sample = KTOSample(prompt, completion, bool(label), where, {k: v for k, v in record.items() if k not in {"prompt", "system", "completion", "label"}})
    to_conversation(sample.conversation().to_dict(), "openai", where)
    return sample


def _prompt(record: dict, where: str) -> list[Message]:
    value = record.get("prompt")
    if value is None:
        raise DataError(f"{where}: field 'prompt' is missing")
    if isinstance(value, list):
        messages = to_conversation({"messages": value}, "openai", where).messages if value else []
        if not messages or messages[-1].role != "user":
            raise DataError(f"{where}: field 'prompt' must end with a user message")
    elif isinstance(value, str):
        messages = [Message("user", value)]
    else:
        raise DataError(f"{where}: field 'prompt' must be text or a list of messages, got {type(value).__name__}")
    system = record.get("system")
    if system:
        if not isinstance(system, str):
            raise DataError(f"{where}: field 'system' must be text")
        messages = [Message("system", system), *[m for m in messages if m.role != "system"]]
    return messages


def _answer(value, where: str, key: str) -> list[Message]:
    """An answer: a string, one assistant message, or a one-message list."""
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"{where}: field '{key}' must hold exactly one assistant message, got {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", value.get("from"))
        if str(role) not in ("assistant", "gpt", "model"):
            raise DataError(f"{where}: field '{key}' must be an assistant message, got role {role!r}")
        content = value.get("content", value.get("value"))
        reasoning = value.get("reasoning_content", value.get("reasoning"))
        messages = to_conversation({"messages": [{"role": "user", "content": "-"},
                                                 {"role": "assistant", "content": content,
                                                  **({"reasoning_content": reasoning} if reasoning is not None else {})}]},
                                   "openai", f"{where} ({key})").messages
        return messages[1:]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return to_conversation({"messages": [{"role": "user", "content": "-"}, {"role": "assistant", "content": str(value)}]},
                               "openai", where).messages[1:]
    if value is None:
        raise DataError(f"{where}: field '{key}' is missing")
    raise DataError(f"{where}: field '{key}' must be text or an assistant message, got {type(value).__name__}")


def _prompt_and_answers(record: dict, where: str) -> tuple[list[Message], list[Message], list[Message]]:
    if "prompt" in record:
        return _prompt(record, where), _answer(record.get("chosen"), where, "chosen"), _answer(record.get("rejected"), where, "rejected")
    # Implicit prompt: two full conversations that differ only in their last (assistant) message.
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(f"{where}: field 'prompt' is missing (chosen and rejected are not full conversations)")
    c = to_conversation({"messages": chosen}, "openai", f"{where} (chosen)").messages
    r = to_conversation({"messages": rejected}, "openai", f"{where} (rejected)").messages
    if c[:-1] != r[:-1] or c[-1].role != "assistant" or r[-1].role != "assistant":
        raise DataError(f"{where}: without 'prompt', chosen and rejected must share every turn but a last assistant answer")
    return c[:-1], c[-1:], r[-1:]


def _sharegpt_prompt(record: dict, where: str) -> list[Message]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list of {{from, value}} turns (the prompt)")
    # Reuse the ShareGPT reader with a placeholder answer, which also checks the turn order.
    messages = to_conversation({"conversations": [*turns, {"from": "gpt", "value": "-"}], "system": record.get("system")},
                               "sharegpt", where).messages[:-1]
    return messages


def _sharegpt_answer(value, where: str, key: str) -> list[Message]:
    if isinstance(value, dict) and "from" in value:
        return _answer({"role": "assistant" if str(value["from"]).lower() in ("gpt", "assistant", "model", "chatgpt") else value["from"],
                        "content": value.get("value")}, where, key)
    return _answer(value, where, key)
