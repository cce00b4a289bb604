"""Chat templates as data: one frozen `ChatFormat` row per model family, one generic renderer.

A template turns a `Conversation` into `Segment`s — pieces of text that know their role, their
message index and whether they are trained on. `honed.data.tokenize` turns segments into ids and
labels; nothing else masks labels. Every row also carries an equivalent Jinja `chat_template`
(in `honed.data.chat_jinja`), so tokenizers we write render the same text through
`tokenizer.apply_chat_template`, llama.cpp and serving stacks.

>>> from honed.data.conversation import Conversation, Message
>>> conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!")])
>>> "".join(s.text for s in get_template("chatml").render(conv))
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n'
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol

from honed.data import chat_jinja
from honed.data.conversation import Conversation
from honed.errors import ConfigError, DataError
from honed.model.families import template_for

log = logging.getLogger(__name__)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text. `trainable` is True only for assistant answers and their end marker."""

    text: str
    role: str  # "system" | "user" | "assistant" | "template"
    trainable: bool
    turn: int  # index of the message it belongs to; -1 for leading scaffolding / generation prompt


class Template(Protocol):
    """What `tokenize` needs from a template: `ChatFormat` rows and `JinjaTemplate` both fit."""

    name: str
    stop_strings: tuple[str, ...]
    supports_thinking: bool

    def render(
        self, conv: Conversation, *, add_generation_prompt: bool = False, enable_thinking: bool | None = None
    ) -> list[Segment]: ...


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split `<think>...</think>answer` into (reasoning, answer), the way Qwen3's template does.

    >>> split_thinking("<think>\\nadd them\\n</think>\\n\\n4")
    ('add them', '4')
    >>> split_thinking("4")
    (None, '4')
    """
    if "</think>" not in text:
        return None, text
    head, _, _ = text.partition("</think>")
    reasoning = head.rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, text.split("</think>")[-1].lstrip("\n")


def _inline_reasoning(content: str, reasoning: str | None) -> str:
    # Families without a thinking format still keep a message's reasoning (nothing the user gave is
    # silently lost); the Jinja twins do the same with `reasoning_content`.
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{content}" if reasoning else content


@dataclass(frozen=True)
class ChatFormat:
    """One family's turn layout. Fields are plain strings so the table reads like the format itself."""

    name: str
    bos: str
    eos: str
    user: tuple[str, str]  # (prefix, suffix)
    assistant_prefix: str  # header before the answer; also the generation prompt
    end_of_turn: str  # trained marker right after the answer
    system: tuple[str, str] | None  # None: merged into the first user turn with `system_join`
    after_turn: str = ""  # untrained text after the end marker (e.g. a newline)
    answer_lead: str = ""  # trained text glued before the answer (Mistral's space after [/INST])
    system_join: str = "\n\n"
    default_system: str | None = None
    strip: frozenset[str] = frozenset()  # roles whose content the official template trims
    final: str = ""  # appended when not adding a generation prompt (Phi-3 ends with eos)
    thinking: bool = False  # Qwen3 rules for <think> blocks
    extra_stops: tuple[str, ...] = ()

    @property
    def jinja(self) -> str:
        return chat_jinja.JINJA[self.name]

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.end_of_turn, *self.extra_stops)

    @property
    def supports_thinking(self) -> bool:
        return self.thinking

    def render(
        self, conv: Conversation, *, add_generation_prompt: bool = False, enable_thinking: bool | None = None
    ) -> list[Segment]:
        """Render `conv` into segments (see the module example)."""
        msgs = conv.messages
        segs: list[Segment] = [Segment(self.bos, "template", False, -1)] if self.bos else []
        merged_system = None
        start = 0
        if msgs and msgs[0].role == "system" and self.system is None:
            if len(msgs) < 2 or msgs[1].role != "user":
                raise DataError(f"{conv.source}: template '{self.name}' has no system role and merges the "
                                "system prompt into the first user turn, but no user turn follows it")
            merged_system, start = msgs[0].content, 1
        elif self.default_system is not None and not (msgs and msgs[0].role == "system"):
            pre, suf = self.system
            segs += [Segment(pre + self.default_system + suf, "template", False, -1)]
        last_query = max((i for i, m in enumerate(msgs) if m.role == "user"), default=len(msgs) - 1)
        for i in range(start, len(msgs)):
            m = msgs[i]
            content = m.content.strip() if m.role in self.strip else m.content
            if m.role == "user":
                pre, suf = self.user
                if merged_system is not None:
                    segs += [Segment(pre, "template", False, i), Segment(merged_system + self.system_join, "system", False, 0)]
                    pre, merged_system = "", None
                segs += [Segment(pre + content + suf, "user", False, i)]
            elif m.role == "system" and self.system is not None:
                pre, suf = self.system
                segs += [Segment(pre + content + suf, "system", False, i)]
            elif m.role == "assistant":
                segs += [Segment(self.assistant_prefix, "template", False, i)]
                segs += self._answer(m, content, i, is_last=i == len(msgs) - 1,
                                     after_query=i > last_query, enable_thinking=enable_thinking)
                segs += [Segment(self.end_of_turn, "assistant", True, i), Segment(self.after_turn, "template", False, i)]
            else:
                where = "after the first message " if m.role == "system" else ""
                raise DataError(f"{conv.source}: message {i} has role '{m.role}' {where}which template "
                                f"'{self.name}' cannot render; use roles system (first), user and assistant")
        if add_generation_prompt:
            segs += [Segment(self.assistant_prefix, "template", False, -1)]
            if self.thinking and enable_thinking is False:
                segs += [Segment("<think>\n\n</think>\n\n", "template", False, -1)]
        elif self.final:
            segs += [Segment(self.final, "template", False, -1)]
        return [s for s in segs if s.text]

    def _answer(self, m, content, i, *, is_last, after_query, enable_thinking) -> list[Segment]:
        if not self.thinking:
            return [Segment(self.answer_lead + _inline_reasoning(content, m.reasoning), "assistant", True, i)]
        reasoning = m.reasoning
        if reasoning is None:
            reasoning, content = split_thinking(content)
        reasoning = reasoning or ""
        # Qwen3 keeps thinking only for turns after the last user query; earlier turns lose it.
        if not (after_query and (is_last or reasoning)):
            return [Segment(content, "assistant", True, i)]
        block = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"
        # With thinking switched off the empty block is part of the prompt the model is given,
        # so it is not something to learn.
        block_trained = not (enable_thinking is False and not reasoning.strip("\n"))
        return [Segment(block, "assistant" if block_trained else "template", block_trained, i),
                Segment(content.lstrip("\n"), "assistant", True, i)]


_ALL = frozenset({"system", "user", "assistant"})

BUILTIN: dict[str, ChatFormat] = {f.name: f for f in [
    ChatFormat("llama3", bos="<|begin_of_text|>", eos="<|end_of_text|>",
               system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
               user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
               assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
               end_of_turn="<|eot_id|>", strip=_ALL),
    ChatFormat("chatml", bos="", eos="<|im_end|>",
               system=("<|im_start|>system\n", "<|im_end|>\n"), user=("<|im_start|>user\n", "<|im_end|>\n"),
               assistant_prefix="<|im_start|>assistant\n", end_of_turn="<|im_end|>", after_turn="\n"),
    ChatFormat("qwen3", bos="", eos="<|im_end|>",
               system=("<|im_start|>system\n", "<|im_end|>\n"), user=("<|im_start|>user\n", "<|im_end|>\n"),
               assistant_prefix="<|im_start|>assistant\n", end_of_turn="<|im_end|>", after_turn="\n",
               thinking=True),
    # Mistral v3 tokenizer layout. mistral-common puts the system prompt in the last user turn; we put
    # it in the first (as v1 did) so that every prefix of a multi-turn conversation renders the same.
    ChatFormat("mistral", bos="<s>", eos="</s>", system=None, user=("[INST] ", "[/INST]"),
               assistant_prefix="", answer_lead=" ", end_of_turn="</s>", strip=frozenset({"assistant"})),
    ChatFormat("gemma", bos="<bos>", eos="<eos>", system=None,
               user=("<start_of_turn>user\n", "<end_of_turn>\n"), assistant_prefix="<start_of_turn>model\n",
               end_of_turn="<end_of_turn>", after_turn="\n", strip=frozenset({"user", "assistant"})),
    ChatFormat("phi3", bos="", eos="<|endoftext|>", system=("<|system|>\n", "<|end|>\n"),
               user=("<|user|>\n", "<|end|>\n"), assistant_prefix="<|assistant|>\n",
               end_of_turn="<|end|>", after_turn="\n", final="<|endoftext|>"),
    ChatFormat("alpaca", bos="", eos="</s>", system=("", "\n\n"), default_system=ALPACA_PREAMBLE,
               user=("### Instruction:\n", "\n\n"), assistant_prefix="### Response:\n",
               end_of_turn="</s>", after_turn="\n\n", extra_stops=("### Instruction:",)),
]}

def builtin_template_names() -> list[str]:
    """Names accepted by `get_template` besides "auto".

    >>> builtin_template_names()[:3]
    ['alpaca', 'chatml', 'gemma']
    """
    return sorted(BUILTIN)


def _bind_alpaca(tokenizer) -> ChatFormat:
    # Alpaca serves any base model, so its BOS/EOS are whatever the tokenizer uses (as the Jinja sees them).
    fmt = BUILTIN["alpaca"]
    if tokenizer is None:
        return fmt
    return dataclasses.replace(fmt, bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or fmt.eos,
                               end_of_turn=tokenizer.eos_token or fmt.end_of_turn)


def get_template(name: str, tokenizer=None, model_type: str | None = None) -> Template:
    """Look up a template by name; "auto" picks the tokenizer's own chat_template, then model_type.

    >>> get_template("llama3").stop_strings
    ('<|eot_id|>',)
    """
    if name == "alpaca":
        return _bind_alpaca(tokenizer)
    if name in BUILTIN:
        return BUILTIN[name]
    if name != "auto":
        raise ConfigError(f"unknown chat template '{name}'; valid names: auto, {', '.join(builtin_template_names())}")
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(own, str) and own:
        for fmt in BUILTIN.values():
            if own.strip() == fmt.jinja.strip():  # our own tokenizers: use the exact segment renderer
                return _bind_alpaca(tokenizer) if fmt.name == "alpaca" else fmt
        return JinjaTemplate(tokenizer, model_type=model_type)
    if template_for(model_type) is not None:  # the family table (honed.model.families) names its template
        return BUILTIN[template_for(model_type)]
    log.warning("no chat_template in the tokenizer and no built-in template for model_type %r; "
                "using the plain 'alpaca' prompt (set `template:` to one of %s to choose)",
                model_type, ", ".join(builtin_template_names()))
    return _bind_alpaca(tokenizer)


class JinjaTemplate:
    """A tokenizer's own `chat_template`, rendered by `tokenizer.apply_chat_template`.

    Answer spans come from rendering prefixes: messages[:i] with a generation prompt must be a prefix
    of the full text, and the answer runs from there through the template's end-of-turn marker.

    >>> tpl = JinjaTemplate(tokenizer)                      # doctest: +SKIP
    >>> [s.text for s in tpl.render(conv) if s.trainable]   # doctest: +SKIP
    ['Hello!<|im_end|>']
    """

    _PROBE = "honed-probe-answer"

    def __init__(self, tokenizer, model_type: str | None = None):
        self.tokenizer = tokenizer
        source = tokenizer.chat_template
        self.name = f"chat_template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"
        self.supports_thinking = "enable_thinking" in source
        # Templates that know nothing of reasoning would drop it; fold it into the answer instead.
        self._fold_reasoning = "reasoning_content" not in source and "<think>" not in source
        self._suggest = template_for(model_type) or " | ".join(builtin_template_names())
        self.end_of_turn = self._probe_end_of_turn()
        self.stop_strings = tuple(dict.fromkeys(s for s in (self.end_of_turn, tokenizer.eos_token) if s))

    def _probe_end_of_turn(self) -> str:
        # The first non-space text after an answer is the marker a generation must end with.
        try:
            text = self._apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": self._PROBE}],
                               False, None)
        except Exception:  # noqa: BLE001 - a template that cannot render the probe just has no known marker
            return self.tokenizer.eos_token or ""
        tail = text.rsplit(self._PROBE, 1)[-1].split()
        return tail[0] if tail else ""

    def _apply(self, msgs: list[dict], add_generation_prompt: bool, enable_thinking) -> str:
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **kwargs)

    def _render(self, conv, msgs, add_generation_prompt, enable_thinking) -> str:
        try:
            return self._apply(msgs, add_generation_prompt, enable_thinking)
        except Exception as e:  # jinja's raise_exception and friends
            raise DataError(f"{conv.source}: {self.name} cannot render this conversation: {e}") from e

    def _messages(self, conv: Conversation) -> list[dict]:
        out = []
        for m in conv.messages:
            d = {"role": m.role, "content": m.content}
            if m.reasoning is not None and self._fold_reasoning:
                d["content"] = _inline_reasoning(m.content, m.reasoning)
            elif m.reasoning is not None:
                d["reasoning_content"] = m.reasoning
            out.append(d)
        return out

    def _inconsistent(self, conv, i) -> DataError:
        return DataError(
            f"{conv.source}: {self.name} does not render conversation prefixes consistently (assistant "
            f"message {i}), so honed cannot tell which tokens are the answer; set `template: {self._suggest}` "
            "to use a built-in template instead")

    def render(self, conv: Conversation, *, add_generation_prompt: bool = False,
               enable_thinking: bool | None = None) -> list[Segment]:
        msgs = self._messages(conv)
        full = self._render(conv, msgs, add_generation_prompt, enable_thinking)
        segs, cursor = [], 0
        for i, m in enumerate(conv.messages):
            if m.role != "assistant":
                continue
            prompt = self._render(conv, msgs[:i], True, enable_thinking)
            if not full.startswith(prompt) or len(prompt) < cursor:
                raise self._inconsistent(conv, i)
            end = self._answer_end(conv, msgs, i, full, prompt, enable_thinking)
            segs += [Segment(full[cursor:len(prompt)], "template", False, -1),
                     Segment(full[len(prompt):end], "assistant", True, i)]
            cursor = end
        segs.append(Segment(full[cursor:], "template", False, -1))
        return [s for s in segs if s.text]

    def _answer_end(self, conv, msgs, i, full, prompt, enable_thinking) -> int:
        start, marker = len(prompt), self.end_of_turn
        alone = self._render(conv, msgs[: i + 1], False, enable_thinking)
        if not alone.startswith(prompt):
            raise self._inconsistent(conv, i)
        answer = alone[start:]
        needle = split_thinking(conv.messages[i].content)[1].strip()
        cut = answer.rfind(needle) + len(needle) if needle and needle in answer else 0
        k = answer.find(marker, cut) if marker else -1
        cut = k + len(marker) if k >= 0 else len(answer.rstrip())
        if full.startswith(answer[:cut], start):
            return start + cut
        # The full conversation renders this turn differently from when it is the last one (Qwen3
        # drops earlier thinking): find its answer text and the marker after it.
        pos = full.find(needle, start) if needle else start
        k = full.find(marker, pos + len(needle)) if marker and pos >= 0 else -1
        if k < 0:
            raise self._inconsistent(conv, i)
        return k + len(marker)
