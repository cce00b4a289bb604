"""What every transform shares: the registry, parameter checking, the Unfit error and text helpers.

A transform is a class with a registry `name`, declared `defaults` for its parameters and an
`apply(sample, rng)` that returns a new Conversation (or, when `expands` is set, a list of new
samples). It never mutates its input and records what it did in `meta["augmentations"]`.

>>> from honed.data.augment import get_transform
>>> t = get_transform("system_prompt", {"prompt": "You are a lab-test expert."})
>>> import random
>>> from honed.data import Conversation, Message
>>> out = t(Conversation([Message("user", "hi"), Message("assistant", "hello")]), random.Random(0))
>>> out.messages[0].content, out.meta["augmentations"][0]["name"]
('You are a lab-test expert.', 'system_prompt')
"""

from __future__ import annotations

import copy
import importlib
import random
import re
from collections.abc import Iterable
from typing import Any, ClassVar

from honed.data.conversation import Conversation, Message
from honed.errors import ConfigError, DataError

TRANSFORMS: dict[str, type["Transform"]] = {}


class Unfit(DataError):
    """The transform does not fit this sample (the message names the sample's source and why).

    A Recipe catches it and, with `on_unfit: skip`, counts the sample instead of failing.
    """


# The modules whose transforms register themselves when imported. They import this module, so it
# imports them by name at first use (here, not in the package's __init__: this module must not
# import the package that imports it).
FAMILY_MODULES = ("labels", "formats", "structure", "negatives", "synthetic", "lexical", "noise", "prompt")


def load_all() -> None:
    """Import every family module so its transforms register (cheap: stdlib + yaml only)."""
    for mod in FAMILY_MODULES:
        importlib.import_module(f"honed.data.augment.{mod}")


def register(cls: type["Transform"]) -> type["Transform"]:
    """Class decorator: make a transform reachable by its `name` from recipes."""
    old = TRANSFORMS.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:  # same class re-imported is fine
        raise ValueError(f"augmentation name {cls.name!r} registered twice")
    TRANSFORMS[cls.name] = cls
    return cls


def get_transform(name: str, params: dict | None = None, labels=None, where: str = "params") -> "Transform":
    """Build a registered transform; unknown names or parameters raise ConfigError listing valid ones.

    >>> get_transform("no_such")
    Traceback (most recent call last):
    ...
    honed.errors.ConfigError: name: unknown augmentation 'no_such'; valid: boundary_case, ...
    """
    load_all()
    if name not in TRANSFORMS:
        valid = ", ".join(sorted(TRANSFORMS))
        raise ConfigError(f"{where.rsplit('.', 1)[0] + '.' if '.' in where else ''}name: unknown augmentation {name!r}; valid: {valid}")
    return TRANSFORMS[name](params, labels=labels, where=where)


class Transform:
    """Base class. Subclasses set `name`, `family`, `defaults` (and `choices` for enumerations)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    expands: ClassVar[bool] = False  # True: apply() returns a list of NEW samples, the input is kept
    needs_labels: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}

    def __init__(self, params: dict | None = None, *, labels=None, where: str = "params"):
        self.where = where
        self.p = self._check(params or {})
        self.labels = labels
        if self.needs_labels and labels is None:
            raise ConfigError(f"{where}: augmentation {self.name!r} needs a `labels:` map in the recipe "
                              f"(e.g. labels: {{positive: [积极, positive], negative: [消极, negative]}})")
        self.setup()

    def _check(self, params: dict) -> dict:
        if not isinstance(params, dict):
            raise ConfigError(f"{self.where}: must be a mapping, got {type(params).__name__}")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "(none)"
            raise ConfigError(f"{self.where}.{unknown[0]}: unknown parameter of {self.name!r}; valid: {valid}")
        merged = copy.deepcopy(self.defaults)
        for key, value in params.items():
            default = self.defaults[key]
            # Type check against the default's type; None defaults accept anything (checked in setup).
            if default is not None and value is not None:
                want = (int, float) if isinstance(default, float) else type(default)
                if isinstance(default, (list, tuple)):
                    want = (list, tuple)
                if isinstance(value, bool) and not isinstance(default, bool) or not isinstance(value, want):
                    raise ConfigError(f"{self.where}.{key}: expected {type(default).__name__}, "
                                      f"got {type(value).__name__} ({value!r})")
            if key in self.choices and value not in self.choices[key]:
                raise ConfigError(f"{self.where}.{key}: {value!r} is not one of {', '.join(map(str, self.choices[key]))}")
            merged[key] = value
        return merged

    def setup(self) -> None:
        """Check parameters against each other and the label set; prepare tables."""

    def observe(self, samples) -> None:
        """See the whole input before any draw (the recipe calls it); a transform that builds new
        samples from the user's other records (boundary_case) collects them here."""

    def bad_param(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {why}")

    def unfit(self, sample: Conversation, why: str) -> Unfit:
        return Unfit(f"{sample.source}: augmentation {self.name!r} does not fit this sample: {why}")

    def apply(self, sample: Conversation, rng: random.Random):
        raise NotImplementedError

    def __call__(self, sample: Conversation, rng: random.Random):
        return self.apply(sample, rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.p})"


# --- conversations ---------------------------------------------------------------------------

def clone(sample: Conversation) -> Conversation:
    """A deep copy, so a transform can edit freely and its input stays as it was."""
    return Conversation([Message(m.role, m.content, m.reasoning) for m in sample.messages],
                        source=sample.source, meta=copy.deepcopy(sample.meta), origin=sample.origin)


def record(sample: Conversation, name: str, **details) -> Conversation:
    """Append `{name, details}` to `meta["augmentations"]` (the sample must already be a copy).

    `details` say what the transform did to this sample (the template drawn, the number of
    edits); they are not recipe parameters and are named apart so nobody feeds them back as such."""
    sample.meta.setdefault("augmentations", []).append({"name": name, "details": details})
    return sample


def answer_index(sample: Conversation) -> int | None:
    """Index of the answer: the last assistant message."""
    for i in range(len(sample.messages) - 1, -1, -1):
        if sample.messages[i].role == "assistant":
            return i
    return None


def prompt_index(sample: Conversation, before: int | None = None) -> int | None:
    """Index of the instruction: the last user message (before the answer when one is given)."""
    end = len(sample.messages) if before is None else before
    for i in range(end - 1, -1, -1):
        if sample.messages[i].role == "user":
            return i
    return None


def turn_indices(t: Transform, sample: Conversation) -> tuple[int, int]:
    """(instruction, answer) indices, or Unfit when the sample has no user→assistant exchange."""
    a = answer_index(sample)
    u = prompt_index(sample, a)
    if a is None or u is None:
        raise t.unfit(sample, "it has no user message followed by an assistant answer")
    return u, a


# --- text ------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ASCII_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_' -]*[A-Za-z0-9_]$|^[A-Za-z0-9_]$")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def lang_of(text: str) -> str:
    """'zh' when the text holds Chinese characters, else 'en' (enough to pick a template set)."""
    return "zh" if has_cjk(text) else "en"


def words_pattern(words: Iterable[str], ignore_case: bool = True) -> re.Pattern | None:
    """One regex matching any of `words`, longest first; Latin words only at word boundaries.

    Chinese has no spaces, so CJK words match anywhere; Latin words must not sit inside a longer
    word ("positive" must not match in "nonpositive").

    >>> words_pattern(["good", "很好"]).findall("goodness good 很好")
    ['good', '很好']
    """
    alts = []
    for w in sorted(set(w for w in words if w), key=len, reverse=True):
        esc = re.escape(w)
        alts.append(rf"(?<![A-Za-z0-9_]){esc}(?![A-Za-z0-9_])" if _ASCII_WORD.match(w) else esc)
    if not alts:
        return None
    return re.compile("|".join(alts), re.IGNORECASE if ignore_case else 0)


def match_case(template: str, word: str) -> str:
    """Carry the capitalisation of `template` (the replaced word) over to `word`."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def find_spans(text: str, pattern: re.Pattern | None) -> list[tuple[int, int]]:
    return [] if pattern is None else [m.span() for m in pattern.finditer(text)]


def overlaps(spans: Iterable[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


def protected_spans(t: Transform, sample: Conversation, text: str) -> list[tuple[int, int]]:
    """Spans no text-level transform may edit: label words, `meta["protected"]`, `protect` regexes.

    Label words are protected so the answer's label never loses its anchor in the instruction,
    and user-named spans (entity names, code, numbers that matter) stay exactly as written.
    """
    spans: list[tuple[int, int]] = []
    if t.labels is not None:
        spans += find_spans(text, t.labels.pattern)
    protected = sample.meta.get("protected") or []
    if isinstance(protected, str):
        protected = [protected]
    spans += find_spans(text, words_pattern(protected, ignore_case=False))
    for rx in t.p.get("protect") or []:
        spans += [m.span() for m in re.finditer(rx, text)]
    return spans


def input_span(text: str, meta: dict) -> tuple[int, int]:
    """Where the input to classify/answer sits inside the instruction text.

    `meta["input"]` wins when it occurs in the text; otherwise the last paragraph, else the last
    line, else what follows a leading "…：" / "…: " label, else the whole text.

    >>> t = "判断下面句子的情感（积极/消极）：\\n我对这个结果感到高兴"
    >>> s, e = input_span(t, {}); t[s:e]
    '我对这个结果感到高兴'
    """
    given = meta.get("input")
    if isinstance(given, str) and given.strip() and given in text:
        s = text.rfind(given)
        return s, s + len(given)
    for sep in ("\n\n", "\n"):
        if sep in text.strip():
            body = text.rstrip()
            s = body.rfind(sep) + len(sep)
            while s < len(body) and body[s].isspace():
                s += 1
            return s, len(body)
    m = re.search(r"[：:]\s*", text)
    if m and m.end() < len(text.rstrip()):
        return m.end(), len(text.rstrip())
    stripped = text.strip()
    s = text.find(stripped)
    return s, s + len(stripped)


SENTENCE_RE = re.compile(r"[^。！？!?；;\n]+?(?:[。！？!?；;]+|\.(?=\s|$)|(?=\n)|$)[\"'”’」』）)]*", re.S)


def split_sentences(text: str) -> list[str]:
    """Sentences with their end punctuation, stripped; "3.5" stays whole (a '.' ends one only before space).

    >>> split_sentences("截止日期是周五。会议在周一！Is it 3.5? Yes.")
    ['截止日期是周五。', '会议在周一！', 'Is it 3.5?', 'Yes.']
    """
    return [s.strip() for s in SENTENCE_RE.findall(text) if s.strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in `text`, leading/trailing spaces excluded."""
    out = []
    for m in SENTENCE_RE.finditer(text):
        chunk = m.group()
        if chunk.strip():
            s = m.start() + (len(chunk) - len(chunk.lstrip()))
            out.append((s, s + len(chunk.strip())))
    return out


def replace_spans(text: str, spans: list[tuple[int, int]], contents: list[str]) -> str:
    """Put contents[i] where spans[i] was (spans sorted, not overlapping); the rest stays as written.

    Shuffles use it so the whitespace and separators between items keep their places.

    >>> replace_spans("A, B; C", [(0, 1), (3, 4), (6, 7)], ["C", "A", "B"])
    'C, A; B'
    """
    out, pos = [], 0
    for (s, e), new in zip(spans, contents):
        out += [text[pos:s], new]
        pos = e
    out.append(text[pos:])
    return "".join(out)


def draw_permutation(n: int, rng: random.Random, items: list | None = None, ensure_change: bool = True) -> list[int]:
    """A random order of range(n); with `ensure_change`, not the identity when the items differ.

    A drawn transform that changes nothing wastes a training step, so a few redraws are allowed;
    with all-equal items any order is the same and the first draw is kept.
    """
    order = list(range(n))
    rng.shuffle(order)
    distinct = items is None or len({repr(x) for x in items}) > 1
    tries = 0
    while ensure_change and distinct and n > 1 and tries < 20 and (
            order == list(range(n)) if items is None else [items[i] for i in order] == list(items)):
        rng.shuffle(order)
        tries += 1
    return order
