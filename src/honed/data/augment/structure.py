"""Structure level: few-shot order (4), instruction components (5) and context rotation (6).

All three are permutations: the same examples, blocks or sentences come out, in another order,
with the separators between them left where they were.
"""

from __future__ import annotations

import random
import re

from honed.data.augment.base import (Transform, clone, draw_permutation, record, register,
                                     replace_spans, sentence_spans, turn_indices)
from honed.data.conversation import Conversation

EXAMPLE_MARKER = r"^[ \t]*(?:#{1,6}[ \t]*)?(?:Example|示例|例子|样例|范例)(?![A-Za-z])[ \t]*\d*[ \t]*[:：.．]?"


def _core(text: str, s: int, e: int) -> tuple[int, int]:
    """Shrink (s, e) to exclude surrounding whitespace."""
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def example_spans(text: str, marker: str | None, delimiter: str | None) -> list[tuple[int, int]]:
    """Spans of the few-shot examples inside a prompt.

    With `delimiter`, examples are the pieces between its first and last occurrence (so the text
    before the first and after the last one stays put). With `marker` (a regex for an example's
    heading), an example runs from after its heading to the next heading; the last one ends at the
    first blank line. Headings stay in place, so "Example 1/2/3" numbering stays in order.

    >>> t = "Classify.\\nExample 1: great → positive\\nExample 2: awful → negative\\n\\nNow: fine"
    >>> [t[s:e] for s, e in example_spans(t, EXAMPLE_MARKER, None)]
    ['great → positive', 'awful → negative']
    """
    spans = []
    if delimiter:
        cuts = [m.start() for m in re.finditer(re.escape(delimiter), text)]
        for a, b in zip(cuts, cuts[1:]):
            spans.append(_core(text, a + len(delimiter), b))
    else:
        heads = list(re.finditer(marker, text, re.M))
        for i, m in enumerate(heads):
            if i + 1 < len(heads):
                end = heads[i + 1].start()
            else:
                blank = re.search(r"\S.*?\n[ \t]*\n", text[m.end():], re.S)
                end = m.end() + blank.end() if blank else len(text)
            spans.append(_core(text, m.end(), end))
    return [(s, e) for s, e in spans if e > s]


@register
class ShuffleExamples(Transform):
    """Shuffle few-shot examples: prior user/assistant turn pairs, or examples marked in the prompt.

    `mode: auto` uses turn pairs when the conversation has at least two before the final
    question, else examples found in the prompt by `delimiter` (literal) or `marker` (regex).

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "A?"), Message("assistant", "a"), Message("user", "B?"),
    ...                   Message("assistant", "b"), Message("user", "C?"), Message("assistant", "c")])
    >>> [m.content for m in ShuffleExamples()(s, random.Random(0)).messages]
    ['B?', 'b', 'A?', 'a', 'C?', 'c']
    """

    name, family = "shuffle_examples", "structure"
    defaults = {"mode": "auto", "marker": EXAMPLE_MARKER, "delimiter": None, "ensure_change": True}
    choices = {"mode": ("auto", "turns", "prompt")}

    def setup(self):
        try:
            re.compile(self.p["marker"], re.M)
        except re.error as err:
            raise self.bad_param("marker", f"not a valid regular expression: {err}") from None
        if self.p["delimiter"] is not None and (not isinstance(self.p["delimiter"], str) or not self.p["delimiter"]):
            raise self.bad_param("delimiter", "expected a non-empty string")

    def apply(self, sample, rng: random.Random):
        u, _ = turn_indices(self, sample)
        pairs = self._turn_pairs(sample, u)
        if self.p["mode"] == "turns" or (self.p["mode"] == "auto" and len(pairs) >= 2):
            if len(pairs) < 2:
                raise self.unfit(sample, "it has fewer than two user/assistant example turns before the question")
            items = [[(m.role, m.content) for m in sample.messages[i:i + 2]] for i in pairs]
            order = draw_permutation(len(pairs), rng, items, self.p["ensure_change"])
            out = clone(sample)
            msgs = [m for i in order for m in out.messages[pairs[i]:pairs[i] + 2]]
            first = pairs[0]
            out.messages[first:first + 2 * len(pairs)] = msgs
            return record(out, self.name, where="turns", order=order)
        text = sample.messages[u].content
        spans = example_spans(text, self.p["marker"], self.p["delimiter"])
        if len(spans) < 2:
            how = f"delimiter {self.p['delimiter']!r}" if self.p["delimiter"] else f"marker {self.p['marker']!r}"
            raise self.unfit(sample, f"fewer than two few-shot examples found in the prompt by {how}")
        items = [text[s:e] for s, e in spans]
        order = draw_permutation(len(items), rng, items, self.p["ensure_change"])
        out = clone(sample)
        out.messages[u].content = replace_spans(text, spans, [items[i] for i in order])
        return record(out, self.name, where="prompt", order=order)

    @staticmethod
    def _turn_pairs(sample: Conversation, u: int) -> list[int]:
        """Start indices of the (user, assistant) pairs between the system turns and the question."""
        i = 0
        while i < u and sample.messages[i].role == "system":
            i += 1
        starts = []
        while i + 1 < u and sample.roles()[i:i + 2] == ["user", "assistant"]:
            starts.append(i)
            i += 2
        return starts if i == u else []


HEADING = (r"^[ \t]*(?:#{1,6}[ \t]+\S.*|【[^】\n]+】.*|\[[^\]\n]{1,40}\][ \t]*"
           r"|[A-Za-z\u4e00-\u9fff][A-Za-z\u4e00-\u9fff ]{0,24}[:：][ \t]*)$")


def component_spans(text: str, split: str = "auto", heading: str = HEADING) -> list[tuple[int, int]]:
    """Spans of the instruction's blocks: at headings when it has two or more, else at blank lines.

    >>> t = "# Task\\nClassify.\\n\\n# Context\\nA shop.\\n\\n# Question\\nGood?"
    >>> [t[s:e] for s, e in component_spans(t)]
    ['# Task\\nClassify.', '# Context\\nA shop.', '# Question\\nGood?']
    """
    heads = [m.start() for m in re.finditer(heading, text, re.M)]
    if split == "headings" or (split == "auto" and len(heads) >= 2):
        cuts = ([0] if text[: heads[0]].strip() else []) + heads if heads else [0]
        bounds = list(zip(cuts, [*cuts[1:], len(text)]))
    else:
        bounds, pos = [], 0
        for m in re.finditer(r"\n[ \t]*\n\s*", text):
            bounds.append((pos, m.start()))
            pos = m.end()
        bounds.append((pos, len(text)))
    return [sp for sp in (_core(text, s, e) for s, e in bounds) if sp[1] > sp[0]]


@register
class ShuffleComponents(Transform):
    """Reorder the instruction's blocks (system prompt, task, examples, context…).

    Blocks are split at headings (`# Task`, `【背景】`, `Context:`) or, without them, at blank
    lines. `keep_last` leaves the final block (usually the question) last. `include_system` moves
    the system prompt into the shuffle as one more block of the user message.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "Task: classify.\\n\\nContext: a shop.\\n\\nText: good"), Message("assistant", "positive")])
    >>> ShuffleComponents()(s, random.Random(0)).messages[0].content
    'Context: a shop.\\n\\nTask: classify.\\n\\nText: good'
    """

    name, family = "shuffle_components", "structure"
    defaults = {"split": "auto", "heading": HEADING, "keep_last": True, "include_system": False, "ensure_change": True}
    choices = {"split": ("auto", "headings", "blank_lines")}

    def apply(self, sample, rng: random.Random):
        u, _ = turn_indices(self, sample)
        text = sample.messages[u].content
        spans = component_spans(text, self.p["split"], self.p["heading"])
        blocks = [text[s:e] for s, e in spans]
        systems = [m.content for m in sample.messages if m.role == "system"] if self.p["include_system"] else []
        fixed = blocks[-1:] if self.p["keep_last"] else []
        movable = [*systems, *(blocks[:-1] if self.p["keep_last"] else blocks)]
        if len(movable) < 2:
            raise self.unfit(sample, f"its instruction has {len(movable)} movable block(s); blocks are split "
                                     "at headings or blank lines")
        order = draw_permutation(len(movable), rng, movable, self.p["ensure_change"])
        out = clone(sample)
        new = [movable[i] for i in order] + fixed
        if systems:
            # The system text joins the user message, so the separators are rebuilt uniformly.
            out.messages = [m for m in out.messages if m.role != "system"]
            u -= len(sample.messages) - len(out.messages)
            out.messages[u].content = text[: spans[0][0]] + "\n\n".join(new) + text[spans[-1][1]:]
        else:
            out.messages[u].content = replace_spans(text, spans, new)
        return record(out, self.name, order=order, include_system=bool(systems))


def _grams(text: str) -> set[str]:
    """Character bigrams for Chinese, lower-cased words for the rest: overlap units for both."""
    words = set(re.findall(r"[A-Za-z0-9]+", text.lower()))
    cjk = re.sub(r"[^\u4e00-\u9fff0-9]", "", text)
    return words | {cjk[i:i + 2] for i in range(len(cjk) - 1)}


@register
class RotateContext(Transform):
    """Move the key sentence of a long context to its start, middle or end.

    The context is `meta["context"]` when it occurs in the instruction, else the longest
    paragraph with at least `min_sentences` sentences. The key sentence is `meta["key_sentence"]`
    (a sentence containing it) or the sentence sharing the most words / character bigrams with
    the answer; no overlap at all makes the sample unfit.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> ctx = "项目的截止日期是周五。团队有五个人。预算已经批准。"
    >>> s = Conversation([Message("user", ctx + "\\n\\n截止日期是哪天？"), Message("assistant", "截止日期是周五。")])
    >>> RotateContext({"position": "end"})(s, random.Random(0)).messages[0].content.split("\\n")[0]
    '团队有五个人。预算已经批准。项目的截止日期是周五。'
    """

    name, family = "rotate_context", "structure"
    defaults = {"position": "random", "min_sentences": 3}
    choices = {"position": ("random", "start", "middle", "end")}

    def _context(self, sample, text: str) -> tuple[int, int] | None:
        given = sample.meta.get("context")
        if isinstance(given, str) and given.strip() and given in text:
            s = text.find(given)
            return s, s + len(given)
        best = None
        for s, e in component_spans(text, "blank_lines"):
            n = len(sentence_spans(text[s:e]))
            if n >= self.p["min_sentences"] and (best is None or e - s > best[1] - best[0]):
                best = (s, e)
        return best

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        text = sample.messages[u].content
        ctx = self._context(sample, text)
        if ctx is None:
            raise self.unfit(sample, f"no context with ≥{self.p['min_sentences']} sentences (set meta.context)")
        c0 = ctx[0]
        spans = [(c0 + s, c0 + e) for s, e in sentence_spans(text[ctx[0]:ctx[1]])]
        sents = [text[s:e] for s, e in spans]
        key = self._key(sample, sents, sample.messages[a].content)
        if key is None:
            raise self.unfit(sample, "no key sentence: none overlaps the answer (set meta.key_sentence)")
        last = len(sents) - 1
        slots = {"start": 0, "middle": last // 2, "end": last}  # insertion index among the other sentences
        pos = self.p["position"]
        if pos == "random":
            pos = rng.choice([p for p, i in slots.items() if i != key] or ["start"])
        rest = sents[:key] + sents[key + 1:]
        rest.insert(slots[pos], sents[key])
        out = clone(sample)
        out.messages[u].content = replace_spans(text, spans, rest)
        return record(out, self.name, key_from=key, key_to=slots[pos], position=pos)

    @staticmethod
    def _key(sample, sents: list[str], answer: str) -> int | None:
        given = sample.meta.get("key_sentence")
        if isinstance(given, str) and given.strip():
            hits = [i for i, s in enumerate(sents) if given.strip() in s or s in given]
            return hits[0] if hits else None
        target = _grams(answer)
        scores = [len(_grams(s) & target) / (len(_grams(s)) or 1) for s in sents]
        best = max(range(len(sents)), key=lambda i: scores[i]) if sents else None
        return best if best is not None and scores[best] > 0 else None

