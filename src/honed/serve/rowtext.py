"""One answer being generated, token by token: its text, where it stops, and what can be sent yet.

Batched generation hands every row its next token; each row's `RowText` decodes what it has,
stops at an end-of-turn token, a stop string or its own token limit, splits Qwen3-style
`<think>` reasoning from the answer, and reports the part of the text that is safe to stream
(never a half-decoded character, never the start of a stop string that may still complete).
The same object gives the final text, so a streamed answer and a non-streamed one are equal.

>>> row = RowText(decode=lambda ids: "".join(map(chr, ids)), stop_ids={0}, stop_strings=("END",), max_tokens=50)
>>> [row.feed(ord(c)) for c in "hi E"]
[False, False, False, False]
>>> row.take_deltas()  # " E" may be the start of "END": held back
(None, 'hi')
>>> row.feed(ord("N")), row.feed(ord("D"))
(False, True)
>>> row.result()
RowResult(text='hi', reasoning=None, new_tokens=6, finish_reason='stop', refusal_probability=None)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class RowResult:
    text: str
    reasoning: str | None
    new_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    refusal_probability: float | None = None  # P(opening with a refusal), with a refusal calibration


def split_reasoning(text: str, final: bool) -> tuple[str | None, str]:
    """(reasoning, answer) of a possibly unfinished `<think>…</think>answer` text.

    While unfinished, trailing whitespace is held back (the final answer is stripped) and a
    text that may still grow into `<think>` shows nothing yet.

    >>> split_reasoning("<think>\\nadd\\n</think>\\n\\n4", final=True)
    ('add', '4')
    >>> split_reasoning("<think>\\nadding the", final=False)
    ('adding the', '')
    >>> split_reasoning("<thi", final=False)
    (None, '')
    """
    head = text.lstrip()
    if THINK_CLOSE in text:
        before, _, answer = text.partition(THINK_CLOSE)
        reasoning = before.split(THINK_OPEN)[-1].strip("\n")
    elif head.startswith(THINK_OPEN):
        reasoning, answer = head[len(THINK_OPEN):].lstrip("\n"), ""
        if not final:  # the end may be the start of </think>
            reasoning = reasoning[: len(reasoning) - _held_prefix(reasoning, (THINK_CLOSE,))].rstrip()
    elif not final and head and THINK_OPEN.startswith(head):
        return None, ""
    else:
        reasoning, answer = None, text
    answer = answer.strip() if final else answer.lstrip().rstrip()
    return reasoning, answer


def _held_prefix(text: str, stops: Iterable[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string (it may still complete)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


class RowText:
    """Accumulates one row's tokens; `feed` returns True once the row is done."""

    def __init__(self, decode: Callable[[list[int]], str], *, stop_ids: Iterable[int], stop_strings: Iterable[str] = (),
                 max_tokens: int, chat: bool = True):
        self.decode, self.stop_ids, self.stop_strings = decode, set(stop_ids), tuple(s for s in stop_strings if s)
        self.max_tokens, self.chat = max_tokens, chat
        self.ids: list[int] = []
        self.tokens_seen = 0
        self.text = ""
        self.finish_reason: str | None = None
        self._sent = ["", ""]  # reasoning and answer sent so far

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        if not self.done:
            self.finish_reason = "cancelled"

    def feed(self, token_id: int) -> bool:
        """Take the row's next token; True when the row has finished."""
        if self.done:
            return True
        self.tokens_seen += 1
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
            return True
        self.ids.append(token_id)
        text = self.decode(self.ids)
        cuts = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if cuts:
            self.text, self.finish_reason = text[: min(cuts)], "stop"
        else:
            self.text = text
            if len(self.ids) >= self.max_tokens:
                self.finish_reason = "length"
        return self.done

    def _visible(self) -> tuple[str | None, str]:
        """(reasoning, answer) as far as they can be shown now."""
        if self.done:
            return split_reasoning(self.text, final=True) if self.chat else (None, self.text)
        text = self.text
        if text.endswith("\ufffd"):  # a character whose bytes have not all arrived
            text = text.rstrip("\ufffd")
        text = text[: len(text) - _held_prefix(text, self.stop_strings)]
        return split_reasoning(text, final=False) if self.chat else (None, text)

    def take_deltas(self) -> tuple[str | None, str]:
        """New (reasoning, answer) text since the last call; reasoning is None when there is none."""
        out = []
        for i, now in enumerate(self._visible()):
            now = now or ""
            sent = self._sent[i]
            # Decoding a longer id list can rewrite the last characters (merged bytes, spaces): only
            # text that extends what was sent goes out; the rest waits for a consistent prefix.
            delta = now[len(sent):] if now.startswith(sent) else ""
            self._sent[i] = sent + delta
            out.append(delta)
        return (out[0] or None), out[1]

    def result(self) -> RowResult:
        reasoning, text = self._visible()
        return RowResult(text, reasoning, self.tokens_seen, self.finish_reason or "length")
