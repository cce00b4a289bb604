"""Prompt level (14): a role-defining system prompt per data set, and clear turn delimiters.

Use a step's `only: {source: "medical*"}` filter to give each data set its own role.
"""

from __future__ import annotations

import random

from honed.data.augment.base import Transform, clone, record, register, turn_indices
from honed.data.conversation import Message


@register
class SystemPrompt(Transform):
    """Set the system prompt: `replace` any existing one, `prepend`/`append` to it, or `if_missing`.

    `prompts` (a list) draws one per sample, for varied wording of the same role.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "hello")])
    >>> SystemPrompt({"prompt": "你是一个JSON格式的API，只返回JSON对象。", "mode": "prepend"})(s, random.Random(0)).messages[0].content
    '你是一个JSON格式的API，只返回JSON对象。\\n\\nBe brief.'
    """

    name, family = "system_prompt", "prompt"
    defaults = {"prompt": None, "prompts": [], "mode": "replace", "separator": "\n\n"}
    choices = {"mode": ("replace", "prepend", "append", "if_missing")}

    def setup(self):
        if self.p["prompt"] is not None and not isinstance(self.p["prompt"], str):
            raise self.bad_param("prompt", "expected a string")
        self.pool = ([self.p["prompt"]] if self.p["prompt"] else []) + list(self.p["prompts"])
        if not self.pool or not all(isinstance(x, str) and x.strip() for x in self.pool):
            raise self.bad_param("prompt", "give `prompt: TEXT` or `prompts: [TEXT, ...]` (non-empty strings)")

    def apply(self, sample, rng: random.Random):
        text, mode = rng.choice(self.pool), self.p["mode"]
        current = next((m.content for m in sample.messages if m.role == "system"), None)
        if mode == "if_missing" and current is not None:
            return sample
        if current is not None and mode == "prepend":
            text = text + self.p["separator"] + current
        elif current is not None and mode == "append":
            text = current + self.p["separator"] + text
        out = clone(sample)
        out.messages = [Message("system", text), *(m for m in out.messages if m.role != "system")]
        return record(out, self.name, mode=mode, prompt=text if len(self.pool) > 1 else "<prompt>")


@register
class TurnDelimiters(Transform):
    """Fold the conversation into one prompt with explicit speaker delimiters, for plain templates.

    "### Human: …\\n### Assistant: …\\n### Human: <question>\\n### Assistant:" becomes the user turn
    and the last answer stays the assistant turn, so a model trained without a chat template
    still sees where each speaker starts and ends.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "A?"), Message("assistant", "a"), Message("user", "B?"), Message("assistant", "b")])
    >>> print(TurnDelimiters()(s, random.Random(0)).messages[0].content)
    ### Human: A?
    ### Assistant: a
    ### Human: B?
    ### Assistant:
    """

    name, family = "turn_delimiters", "prompt"
    defaults = {"user": "### Human:", "assistant": "### Assistant:", "system": "### System:",
                "include_system": False, "end_with_assistant_tag": True, "joiner": "\n"}

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        tags = {"user": self.p["user"], "assistant": self.p["assistant"], "system": self.p["system"]}
        keep_system = [] if self.p["include_system"] else [m for m in sample.messages[:u] if m.role == "system"]
        lines = [f"{tags[m.role]} {m.content}" for m in sample.messages[: u + 1]
                 if m.role in tags and (self.p["include_system"] or m.role != "system")]
        if self.p["end_with_assistant_tag"]:
            lines.append(self.p["assistant"])
        out = clone(sample)
        out.messages = [*(Message(m.role, m.content) for m in keep_system),
                        Message("user", self.p["joiner"].join(lines)), out.messages[a]]
        return record(out, self.name, user=self.p["user"], assistant=self.p["assistant"])
