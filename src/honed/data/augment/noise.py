"""Text level: input noise (11) — typos, punctuation and spacing noise, Chinese character noise.

Noise goes into user (or system) text only; the answer stays clean, which is the point: the
model learns to read imperfect input and still write a correct answer. Digits, negations
(不/没/not/n't …), label words and protected spans are never touched, because changing them
would change the meaning, and then the unchanged answer would be wrong.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from honed.data.augment.base import Transform, clone, protected_spans, record, register

RESOURCES = Path(__file__).parent / "resources"
KINDS = ("swap", "drop", "duplicate", "keyboard", "punctuation", "spacing", "homophone")
# Typos are rules, not a library's: the augmentation libraries (nlpaug, textattack) neither take
# our seeded Random nor spare protected spans, digits and negations, which is the point here.
KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
WIDTH = dict(zip("，。！？：；（）", ",.!?:;()")) | dict(zip(",.!?:;()", "，。！？：；（）"))
PUNCT = set(WIDTH) | set("、…\"'“”")
# Meaning-bearing tokens: touching them could flip a label or a fact.
NEGATION = re.compile(r"[不没无非未别莫勿否]|(?<![A-Za-z])(?:not|no|never|nor|none|nothing|neither)(?![A-Za-z])|n't",
                      re.IGNORECASE)
_CJK = re.compile(r"[\u4e00-\u9fff]")


@functools.lru_cache(maxsize=8)
def load_char_groups(path: str) -> dict[str, tuple[str, ...]]:
    """Character → characters it is confused with, from a file of space-separated groups."""
    table: dict[str, set[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        group = line.split("#", 1)[0].split()
        for c in group:
            table.setdefault(c, set()).update(x for x in group if x != c)
    return {c: tuple(sorted(v)) for c, v in table.items()}


def keyboard_neighbours() -> dict[str, str]:
    """QWERTY keys next to each letter (same row, and the row above and below)."""
    near: dict[str, set[str]] = {}
    for r, row in enumerate(KEY_ROWS):
        for i, c in enumerate(row):
            s = near.setdefault(c, set())
            s.update(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
            for rr in (r - 1, r + 1):
                if 0 <= rr < len(KEY_ROWS):
                    s.update(KEY_ROWS[rr][j] for j in (i - 1, i, i + 1) if 0 <= j < len(KEY_ROWS[rr]))
    return {c: "".join(sorted(v)) for c, v in near.items()}


NEIGHBOURS = keyboard_neighbours()


@register
class Noise(Transform):
    """Add typos and character noise at `rate` (the chance each eligible character is edited).

    Kinds: swap (adjacent letters), drop, duplicate, keyboard (neighbour key), punctuation
    (drop/double/full↔half width), spacing (double or missing space), homophone (a Chinese
    character typed as another: `homophones` from pypinyin's readings, the candidates a pinyin input
    method offers for the same keys; plus look-alikes from `char_table`, by default the shipped
    `char_noise_zh.txt`, which no library lists). Latin letters are edited only inside words of at
    least `min_word_len` letters. At least one edit is made when any position is eligible.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "What is the capital of France?"), Message("assistant", "Paris")])
    >>> out = Noise({"rate": 0.1, "kinds": ["swap", "keyboard"]})(s, random.Random(0))
    >>> out.messages[0].content != s.messages[0].content, out.messages[1].content
    (True, 'Paris')
    """

    name, family = "noise", "noise"
    defaults = {"rate": 0.05, "kinds": list(KINDS), "roles": ["user"], "min_word_len": 4, "max_edits": None,
                "homophones": True, "char_table": None, "protect": []}

    def setup(self):
        if not 0.0 < self.p["rate"] <= 1.0:
            raise self.bad_param("rate", f"expected a number in (0, 1], got {self.p['rate']!r}")
        bad = [k for k in self.p["kinds"] if k not in KINDS]
        if bad or not self.p["kinds"]:
            raise self.bad_param("kinds", f"{bad or '[]'} — choose from {', '.join(KINDS)}")
        # The answer must stay clean: noise in assistant text would teach the model to make typos.
        bad = [r for r in self.p["roles"] if r not in ("user", "system")]
        if bad or not self.p["roles"]:
            raise self.bad_param("roles", f"{bad or '[]'} — noise may only edit user and system text")
        path = self.p["char_table"] or str(RESOURCES / "char_noise_zh.txt")
        if not Path(path).is_file():
            raise self.bad_param("char_table", f"{path!r} is not a file")
        table = {c: set(alts) for c, alts in load_char_groups(str(path)).items()}
        if self.p["homophones"]:
            from honed.data.lexicons import LexiconMissing, homophone_table

            try:
                homophones = homophone_table()
            except LexiconMissing as err:
                raise self.bad_param("homophones", str(err)) from None
            for c, alts in homophones.items():
                table.setdefault(c, set()).update(alts)
        self.chars = {c: tuple(sorted(alts)) for c, alts in table.items() if alts}

    def _ops(self, text: str, i: int, word_len: int, blocked: set[int]) -> list[str]:
        """Edits that are allowed at position i, given the kinds asked for."""
        c, kinds = text[i], self.p["kinds"]
        if i in blocked or c.isdigit():
            return []
        if c in PUNCT or c == " ":
            # "3.5" or "3 5" with the dot/space dropped reads as another number.
            if (i > 0 and text[i - 1].isdigit()) or (i + 1 < len(text) and text[i + 1].isdigit()):
                return []
        if c.isascii() and c.isalpha():
            if word_len < self.p["min_word_len"]:
                return []
            ops = [k for k in ("drop", "duplicate") if k in kinds]
            if "swap" in kinds and i + 1 < len(text) and i + 1 not in blocked and text[i + 1].isascii() \
                    and text[i + 1].isalpha() and text[i + 1].lower() != c.lower():
                ops.append("swap")
            if "keyboard" in kinds and c.lower() in NEIGHBOURS:
                ops.append("keyboard")
            return ops
        if _CJK.match(c):
            ops = [k for k in ("drop", "duplicate") if k in kinds]
            if "homophone" in kinds and c in self.chars:
                ops += ["homophone"] * 2  # the most natural Chinese typo, so drawn more often
            return ops
        if c in PUNCT and "punctuation" in kinds:
            return ["punct_drop", "punct_double"] + (["punct_width"] if c in WIDTH else [])
        if c == " " and "spacing" in kinds:
            return ["space_double", "space_drop"]
        return []

    def _edit(self, text: str, protected, rng: random.Random) -> tuple[str, list[str]]:
        blocked = {j for s, e in protected + [m.span() for m in NEGATION.finditer(text)] for j in range(s, e)}
        word_len = {}
        for m in re.finditer(r"[A-Za-z]+", text):
            for j in range(m.start(), m.end()):
                word_len[j] = m.end() - m.start()
        eligible = [(i, ops) for i in range(len(text)) for ops in [self._ops(text, i, word_len.get(i, 0), blocked)] if ops]
        if not eligible:
            return text, []
        picked = [e for e in eligible if rng.random() < self.p["rate"]] or [rng.choice(eligible)]
        if self.p["max_edits"] is not None:
            picked = sorted(rng.sample(picked, min(len(picked), self.p["max_edits"])))
        chars, notes, skip = list(text), [], set()
        for i, ops in picked:
            if i in skip:
                continue
            op, c = rng.choice(ops), text[i]
            if op == "swap" and i + 1 not in skip:
                chars[i], chars[i + 1] = text[i + 1], c
                skip.add(i + 1)  # the neighbour moved already; editing it again would undo the typo
            elif op in ("drop", "punct_drop", "space_drop"):
                chars[i] = ""
            elif op in ("duplicate", "punct_double", "space_double"):
                chars[i] = c * 2
            elif op == "keyboard":
                k = rng.choice(NEIGHBOURS[c.lower()])
                chars[i] = k.upper() if c.isupper() else k
            elif op == "homophone":
                chars[i] = rng.choice(self.chars[c])
            elif op == "punct_width":
                chars[i] = WIDTH[c]
            else:
                continue
            notes.append(f"{op}@{i}")
        return "".join(chars), notes

    def apply(self, sample, rng: random.Random):
        out, notes = clone(sample), []
        for m in out.messages:
            if m.role in self.p["roles"]:
                m.content, n = self._edit(m.content, protected_spans(self, sample, m.content), rng)
                notes += n
        return record(out, self.name, edits=len(notes)) if notes else sample
