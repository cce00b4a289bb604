"""Text level: synonym replacement from lexicons and word lists (9) and rule-based sentence rewriting (10).

Both leave protected spans alone: the recipe's label words, `meta["protected"]` strings and the
`protect` regexes of the step. By default they edit user text only.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import yaml

from honed.data.augment.base import (Transform, clone, match_case, overlaps, protected_spans, record, register,
                                     replace_spans, sentence_spans, words_pattern)
from honed.errors import ConfigError

RESOURCES = Path(__file__).parent / "resources"
BUILTIN_DICTIONARIES = {"zh": RESOURCES / "synonyms_zh.txt", "en": RESOURCES / "synonyms_en.txt"}
ROLES = ("system", "user", "assistant")


def _resource_path(spec: str, builtins: dict, where: str) -> Path:
    path = builtins.get(spec) or Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: {spec!r} is neither a built-in ({', '.join(builtins)}) nor an existing file")
    return path


@functools.lru_cache(maxsize=32)
def load_synonyms(path: str) -> dict[str, tuple[str, ...]]:
    """word (lower-cased) → its alternatives, from a file of comma-separated groups (# comments).

    >>> table = load_synonyms(str(BUILTIN_DICTIONARIES["zh"]))
    >>> "出色" in table["精彩"]
    True
    """
    table: dict[str, set[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        group = [w.strip() for w in re.split(r"[,，\t]", line) if w.strip()]
        for w in group:
            table.setdefault(w.lower(), set()).update(x for x in group if x.lower() != w.lower())
    return {w: tuple(sorted(alts)) for w, alts in table.items() if alts}


class _TextTransform(Transform):
    """Shared: which roles to edit, checked against what the transform may touch."""

    allowed_roles = ROLES

    def setup(self):
        bad = [r for r in self.p["roles"] if r not in self.allowed_roles]
        if bad or not self.p["roles"]:
            raise self.bad_param("roles", f"{bad or '[]'} — {self.name} may edit: {', '.join(self.allowed_roles)}")
        for rx in self.p.get("protect") or []:
            try:
                re.compile(rx)
            except re.error as err:
                raise self.bad_param("protect", f"{rx!r} is not a valid regular expression: {err}") from None

    def edit_roles(self, sample, rng, edit) -> tuple:
        """Run edit(text, protected_spans, rng) → (text, notes) on every message of the chosen roles."""
        out, notes = clone(sample), []
        for m in out.messages:
            if m.role in self.p["roles"]:
                m.content, n = edit(m.content, protected_spans(self, sample, m.content), rng)
                notes += n
        return out, notes


# Lexicons looked up word by word (too large for one regex): name → (which tokens, lookup).
LEXICONS = ("wordnet", "cilin")


@register
class SynonymReplace(_TextTransform):
    """Replace words by a synonym: "这部电影非常精彩" → "这部影片非常出色", "a terrible ending" →
    "an awful ending".

    `dictionaries` lists lexicons and word lists, merged:
    - `wordnet`: English WordNet 3.0 (most frequent sense of each word; `honed.data.lexicons`),
    - `cilin`: the Chinese Tongyici Cilin's synonym groups, on jieba's words,
    - `en`, `zh`: the small hand-made lists shipped with honed (kept as examples of the format),
    - a file path: comma-separated groups of synonyms, one group a line (`#` comments); its
      entries may be phrases, and they win over the lexicons where both match.
    Each candidate is replaced with probability `rate`; when the draw picks none, one is still
    replaced, so a drawn step always changes the sample if it can.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "这部电影非常精彩"), Message("assistant", "同意")])
    >>> SynonymReplace({"rate": 0.5})(s, random.Random(1)).messages[0].content
    '这部影片非常精彩'
    """

    name, family = "synonym_replace", "lexical"
    defaults = {"dictionaries": ["wordnet", "cilin"], "rate": 0.3, "max_replacements": None, "roles": ["user"],
                "protect": []}

    def setup(self):
        super().setup()
        if not 0.0 <= self.p["rate"] <= 1.0:
            raise self.bad_param("rate", f"expected a number in [0, 1], got {self.p['rate']!r}")
        self.table: dict[str, tuple[str, ...]] = {}
        self.lexicons = [str(d) for d in self.p["dictionaries"] if str(d) in LEXICONS]
        for spec in self.p["dictionaries"]:
            if str(spec) in LEXICONS:
                continue
            path = _resource_path(str(spec), BUILTIN_DICTIONARIES, f"{self.where}.dictionaries")
            for w, alts in load_synonyms(str(path)).items():
                self.table[w] = tuple(sorted(set(self.table.get(w, ())) | set(alts)))
        self.pattern = words_pattern(self.table)
        if self.lexicons:
            from honed.data import lexicons

            try:  # load now, so a missing package is an error at setup, naming the parameter
                for name in self.lexicons:
                    getattr(lexicons, f"{name}_synonyms")("test")
            except lexicons.LexiconMissing as err:
                raise self.bad_param("dictionaries", str(err)) from None

    def _candidates(self, text: str, protected) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, alternatives) of each replaceable word, in text order, not overlapping."""
        found = [(m.start(), m.end(), self.table[m.group().lower()]) for m in self.pattern.finditer(text)] \
            if self.pattern else []
        if self.lexicons:
            from honed.data import lexicons

            taken = [(s, e) for s, e, _ in found]
            for s, e, word, lexicon in lexicons.lexicon_words(text, self.lexicons):
                if not overlaps(taken, s, e):
                    alts = getattr(lexicons, f"{lexicon}_synonyms")(word)
                    if alts:
                        found.append((s, e, alts))
        return sorted(c for c in found if not overlaps(protected, c[0], c[1]))

    def _edit(self, text: str, protected, rng: random.Random):
        cands = self._candidates(text, protected)
        if not cands:
            return text, []
        chosen = [c for c in cands if rng.random() < self.p["rate"]] or [rng.choice(cands)]
        if self.p["max_replacements"] is not None:
            chosen = sorted(rng.sample(chosen, min(len(chosen), self.p["max_replacements"])))
        news = [match_case(text[s:e], rng.choice(alts)) for s, e, alts in chosen]
        spans = [(s, e) for s, e, _ in chosen]
        notes = [f"{text[s:e]}→{new}" for (s, e), new in zip(spans, news)]
        text, spans = _fix_articles(text, spans, news)
        return replace_spans(text, spans, news), notes

    def apply(self, sample, rng: random.Random):
        out, notes = self.edit_roles(sample, rng, self._edit)
        return record(out, self.name, replaced=notes) if notes else sample


def _fix_articles(text: str, spans: list, news: list[str]) -> tuple[str, list]:
    """Keep "a"/"an" right before a replaced English word ("a terrible" → "an awful", not "a awful")."""
    out, shift, new_spans, pos = [], 0, [], 0
    for (s, e), new in zip(spans, news):
        m = re.search(r"(?<![A-Za-z])(a|an|A|An)(\s+)$", text[pos:s])
        if m and new[:1].isascii() and new[:1].isalpha():
            want = "an" if new[0].lower() in "aeiou" else "a"
            want = want.capitalize() if m.group(1)[0].isupper() else want
            a0 = pos + m.start(1)
            out += [text[pos:a0], want + m.group(2)]
            shift += len(want) - len(m.group(1))
            out.append(text[a0 + len(m.group(1)) + len(m.group(2)):s])
        else:
            out.append(text[pos:s])
        out.append(text[s:e])
        new_spans.append((s + shift, e + shift))
        pos = e
    out.append(text[pos:])
    return "".join(out), new_spans


@functools.lru_cache(maxsize=32)
def load_rules(path: str) -> tuple:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return tuple((r["match"], tuple(r["to"])) for r in data.get("rules", []))


_SLOT = re.compile(r"\{(\w+)(?:\|(cap|lower))?\}")


def fill(template: str, groups: dict) -> str:
    """'{x|cap}, in my view' with x='it works' → 'It works, in my view'."""
    def one(m):
        v = groups.get(m.group(1)) or ""
        if m.group(2) == "cap":
            return v[:1].upper() + v[1:]
        if m.group(2) == "lower" and v[:2] not in ("I ", "I'"):
            return v[:1].lower() + v[1:]
        return v
    return _SLOT.sub(one, template)


@register
class RewriteSentence(_TextTransform):
    """Paraphrase whole sentences with pattern rules: "What is X?" → "Can you explain X?",
    "X是什么？" → "请解释一下X。", "我认为这个产品很好用" → "这个产品，在我看来，很好用".

    A rule rewrites a sentence only when every protected span in it lies inside a captured
    group (captured text is copied unchanged). At most `max_rewrites` sentences per message.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> t = RewriteSentence({"rules": [{"match": "^What is (?P<x>[^?]+)\\\\?$", "to": ["Can you explain {x}?"]}],
    ...                      "replace_rules": True})
    >>> t(Conversation([Message("user", "What is HbA1c?"), Message("assistant", "A blood test.")]), random.Random(0)).messages[0].content
    'Can you explain HbA1c?'
    """

    name, family = "rewrite_sentence", "lexical"
    defaults = {"rules": [], "rules_file": None, "replace_rules": False, "max_rewrites": 1,
                "roles": ["user"], "protect": []}

    def setup(self):
        super().setup()
        # (where to point an error, regex, templates): errors name the rule the user wrote.
        raw = [] if self.p["replace_rules"] else [(f"built-in rule {i}", *r) for i, r in
                                                  enumerate(load_rules(str(RESOURCES / "rewrites.yaml")))]
        if self.p["rules_file"]:
            path = _resource_path(self.p["rules_file"], {}, f"{self.where}.rules_file")
            raw += [(f"rules_file {path} rule {i}", *r) for i, r in enumerate(load_rules(str(path)))]
        for i, r in enumerate(self.p["rules"]):
            if not isinstance(r, dict) or set(r) != {"match", "to"}:
                raise self.bad_param(f"rules[{i}]", "expected {match: REGEX, to: [TEMPLATE, ...]}")
            raw.append((f"rules[{i}]", r["match"], tuple([r["to"]] if isinstance(r["to"], str) else r["to"])))
        self.rules = []
        for where, rx, tos in raw:
            try:
                compiled = re.compile(rx)
            except re.error as err:
                raise self.bad_param(f"{where}.match", f"{rx!r} is not a valid regular expression: {err}") from None
            for to in tos:
                missing = {m.group(1) for m in _SLOT.finditer(to)} - set(compiled.groupindex)
                if missing:
                    raise self.bad_param(f"{where}.to", f"{to!r} names groups {sorted(missing)} the regex lacks")
            self.rules.append((compiled, tos))
        if not self.rules:
            raise self.bad_param("rules", "no rules left (replace_rules: true with no rules given)")

    def _edit(self, text: str, protected, rng: random.Random):
        options = []  # (span, rewritten sentence, rule index)
        for s, e in sentence_spans(text):
            sent = text[s:e]
            inner = [(a - s, b - s) for a, b in protected if a < e and s < b]
            for i, (rx, tos) in enumerate(self.rules):
                m = rx.match(sent)
                if not m:
                    continue
                groups = [m.span(g) for g in rx.groupindex if m.group(g) is not None]
                if all(any(gs <= a and b <= ge for gs, ge in groups) for a, b in inner):
                    new = fill(rng.choice(tos), m.groupdict())
                    if new != sent:
                        options.append(((s, e), new, i))
                    break
        if not options:
            return text, []
        picked = sorted(rng.sample(options, min(len(options), self.p["max_rewrites"])), key=lambda o: o[0])
        return (replace_spans(text, [o[0] for o in picked], [o[1] for o in picked]),
                [f"rule {i}" for _, _, i in picked])

    def apply(self, sample, rng: random.Random):
        out, notes = self.edit_roles(sample, rng, self._edit)
        return record(out, self.name, rules=notes) if notes else sample

