"""New samples around the decision boundary: negative samples with corrections (7), hard negatives
that flip the label (12) and ambiguous boundary cases labelled neutral (13).

Each returns a list of NEW samples (the recipe keeps the original); an empty list means "no
safe sample could be made from this one" (counted as unchanged), never a guess.
"""

from __future__ import annotations

import random
import re

from honed.data.augment.base import (Transform, clone, has_cjk, input_span, lang_of, record, register,
                                     split_sentences, turn_indices)
from honed.data.augment.labels import answer_label_words, label_key_or_unfit
from honed.data.conversation import Conversation, Message

NEGATIVE_PROMPT = {
    "zh": "{question}\n\n下面是一个回答：\n{bad}\n\n这个回答对吗？如果不对，请指出问题并给出正确的回答。",
    "en": "{question}\n\nHere is an answer:\n{bad}\n\nIs this answer correct? If not, point out the problem and give the correct answer.",
}
NEGATIVE_ANSWER = {"zh": "这个回答不正确。{why}正确的回答是：\n{good}",
                   "en": "This answer is not correct. {why}The correct answer is:\n{good}"}
WHY = {"label_swap": {"zh": "它把类别判断为“{bad}”，但应为“{good}”。", "en": 'It says "{bad}" but the right label is "{good}". '},
       "number": {"zh": "其中的数字“{bad}”有误，应为“{good}”。", "en": 'The number "{bad}" is wrong; it should be "{good}". '},
       "given": {"zh": "", "en": ""}}
_NUM = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])")


@register
class NegativeSample(Transform):
    """A new sample that shows a corrupted answer and asks for its correction.

    The corruption is `meta["bad_answer"]` when given, else a swapped label (classification
    samples with `labels:`), else one changed number in the answer; otherwise the sample is unfit.
    The new answer names the error and repeats the original, correct answer, so meta["label"] stays.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "地球是平的吗？"), Message("assistant", "不，地球是近似球体。")],
    ...                  meta={"bad_answer": "是的，地球是平的。"})
    >>> new = NegativeSample()(s, random.Random(0))[0]
    >>> new.messages[1].content
    '这个回答不正确。正确的回答是：\\n不，地球是近似球体。'
    """

    name, family, expands = "negative_sample", "negatives", True
    defaults = {"strategy": "auto", "prompt_template": None, "answer_template": None}
    choices = {"strategy": ("auto", "given", "label_swap", "number")}

    def setup(self):
        if self.p["strategy"] == "label_swap" and self.labels is None:
            raise self.bad_param("strategy", "label_swap needs a `labels:` map in the recipe")
        for key, need in (("prompt_template", ("{question}", "{bad}")), ("answer_template", ("{good}",))):
            tpl = self.p[key]
            if tpl is not None and (not isinstance(tpl, str) or not all(n in tpl for n in need)):
                raise self.bad_param(key, f"needs the placeholders {', '.join(need)}")

    def _corrupt(self, sample, a: int, rng: random.Random, strategy: str):
        answer = sample.messages[a].content
        if strategy == "given":
            bad = sample.meta.get("bad_answer")
            return (bad, "", "") if isinstance(bad, str) and bad.strip() and bad != answer else None
        if strategy == "label_swap":
            if self.labels is None or sample.meta.get("label") is None:
                return None
            key, _ = label_key_or_unfit(self, sample)
            hits = answer_label_words(self, sample, key, a)
            target = rng.choice([k for k in self.labels.words if k != key])
            word = hits[0].group()
            bad_word = self.labels.counterpart(word, target)
            return self.labels.pattern.sub(lambda m: self.labels.counterpart(m.group(), target)
                                           if self.labels.key_of(m.group()) == key else m.group(), answer), bad_word, word
        nums = list(_NUM.finditer(answer))
        if not nums:
            return None
        m = rng.choice(nums)
        old = m.group()
        if "." in old:
            new = f"{float(old) * rng.choice([0.5, 2, 10]):.{len(old.split('.')[1])}f}"
        else:
            new = str(max(0, int(old) + rng.choice([-3, -2, -1, 1, 2, 3, 10])))
        if new == old:
            new = str(int(float(old)) + 1)
        return answer[: m.start()] + new + answer[m.end():], new, old

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        strategies = [self.p["strategy"]] if self.p["strategy"] != "auto" else ["given", "label_swap", "number"]
        for strategy in strategies:
            got = self._corrupt(sample, a, rng, strategy)
            if got:
                break
        else:
            raise self.unfit(sample, f"no way to corrupt its answer with strategy {self.p['strategy']!r} "
                                     '(give meta["bad_answer"], a label, or numbers in the answer)')
        bad, bad_part, good_part = got
        question, good = sample.messages[u].content, sample.messages[a].content
        lang = lang_of(question + good)
        prompt = (self.p["prompt_template"] or NEGATIVE_PROMPT[lang]).format(question=question, bad=bad)
        why = WHY[strategy][lang].format(bad=bad_part, good=good_part)
        answer = (self.p["answer_template"] or NEGATIVE_ANSWER[lang]).format(good=good, why=why)
        new = clone(sample)
        systems = [m for m in new.messages[:u] if m.role == "system"]
        new.messages = [*systems, Message("user", prompt), Message("assistant", answer)]
        new.meta.update(negative_of=sample.source, bad_answer=bad)
        return [record(new, self.name, strategy=strategy)]


NEGATION = re.compile(r"[不没无非未别莫勿否]|(?<![A-Za-z])(?:not|no|never|nor|none|nothing|hardly|neither)(?![A-Za-z])|n't",
                      re.IGNORECASE)
# Emphatic idioms that hold a negation character but state the opposite of a negation: "不能更高兴了"
# (could not be happier), "再好不过", "couldn't be better". They are no obstacle to a flip.
EMPHATIC = re.compile(r"不能(?:再|更)[^，。！？,.!?\s]{1,6}了|再[^，。！？,.!?\s]{1,4}不过|"
                      r"(?:couldn't|could not|can't|cannot) be (?:happier|better|more \w+)", re.IGNORECASE)
# Patterns per SOURCE label. Denying a positive statement reads as negative ("I can't say I liked
# it"), but denying a negative one only reads as "not negative" ("not bad" is not praise), so the
# negative→positive patterns add an explicit positive verdict as a contrast instead.
FLIP_PATTERNS = {
    "positive": {"zh": ["我不能说{x}。", "我没办法说{x}。", "都说{x}，可我亲身体验后完全不这么觉得，挺失望的。"],
                 "en": ["I can't say {x}.", "It would be a lie to say {x}.",
                        "People told me {x}, but in my experience that was not true at all; I was disappointed."]},
    "negative": {"zh": ["都说{x}，可我亲身体验后完全不这么觉得，很满意。", "听说{x}，实际体验却恰恰相反，非常满意。"],
                 "en": ["People told me {x}, but in my experience that was not true at all; I was delighted.",
                        "I had heard {x}, but it turned out the opposite, and I loved it."]},
}
# Built-in contrast patterns report what others said, so a first-person input ("我很失望") would
# read wrongly inside them; such inputs get no sample from those patterns.
THIRD_PERSON_ONLY = {p for pats in FLIP_PATTERNS["negative"].values() for p in pats} | {
    FLIP_PATTERNS["positive"]["zh"][2], FLIP_PATTERNS["positive"]["en"][2]}
_FIRST_PERSON = re.compile(r"^(?:我|I\b|I'|My\b|We\b|Our\b)")


def _lower_first(x: str) -> str:
    """'The movie was great' → 'the movie was great' (keeps 'I …' and acronyms such as 'USB')."""
    if x[:2] in ("I ", "I'") or len(x) < 2 or x[1].isupper():
        return x
    return x[0].lower() + x[1:]


def _relabel(t: Transform, sample: Conversation, a: int, key: str, target: str) -> str | None:
    """The answer with its label words moved to `target`, or None when it names other labels too."""
    text = sample.messages[a].content
    if any(t.labels.key_of(m.group()) != key for m in t.labels.pattern.finditer(text)):
        return None
    return t.labels.pattern.sub(lambda m: t.labels.counterpart(m.group(), target), text)


@register
class HardNegative(Transform):
    """A look-alike of the input wrapped in a negation/contrast pattern, with the label flipped by `flip`.

    "我对这个结果感到高兴" (positive) → "我不能说我对这个结果感到高兴。" (negative). A flip is made
    only when it is certain: the label is in `flip`, the input is ONE sentence and holds no
    negation already (a double negation would be ambiguous); otherwise no sample is made.
    Patterns are given per source label (`patterns: {positive: {zh: [...], en: [...]}}`); built-in
    ones exist for labels named positive and negative, any other flipped label needs its own.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> from honed.data.augment import LabelSet
    >>> ls = LabelSet.from_config({"positive": ["positive"], "negative": ["negative"]})
    >>> t = HardNegative({"flip": {"positive": "negative", "negative": "positive"}}, labels=ls)
    >>> s = Conversation([Message("user", "Sentiment:\\nI liked it"), Message("assistant", "positive")], meta={"label": "positive"})
    >>> new = t(s, random.Random(0))[0]
    >>> new.messages[0].content.splitlines()[-1], new.messages[1].content, new.meta["label"]
    ('It would be a lie to say I liked it.', 'negative', 'negative')
    """

    name, family, expands, needs_labels = "hard_negative", "negatives", True, True
    defaults = {"flip": {}, "patterns": {}, "replace_patterns": False}

    def setup(self):
        flip = self.p["flip"]
        if not flip:
            raise self.bad_param("flip", "give the binary label map, e.g. {positive: negative, negative: positive}")
        for k, v in flip.items():
            for x in (k, v):
                if x not in self.labels.words:
                    raise self.bad_param("flip", f"{x!r} is not a label of the recipe; labels: {', '.join(self.labels.words)}")
        self.pools: dict[str, dict[str, list[str]]] = {}
        for source in flip:
            own = self.p["patterns"].get(source, {})
            if not isinstance(own, dict) or set(own) - {"zh", "en"}:
                raise self.bad_param(f"patterns.{source}", "expected {zh: [PATTERN, ...], en: [PATTERN, ...]}")
            # replace_patterns swaps out the built-ins only for the labels whose patterns you give.
            base = {} if self.p["replace_patterns"] and own else FLIP_PATTERNS.get(source, {})
            pools = {lang: [*base.get(lang, []), *own.get(lang, [])] for lang in ("zh", "en")}
            for lang, pats in pools.items():
                if any(not isinstance(p, str) or "{x}" not in p for p in pats):
                    raise self.bad_param(f"patterns.{source}.{lang}", "every pattern needs an {x} placeholder")
            if not any(pools.values()):
                raise self.bad_param(f"patterns.{source}", f"no flip patterns for label {source!r}; built-in "
                                     f"ones exist for {', '.join(FLIP_PATTERNS)} — give {{zh: [...], en: [...]}}")
            self.pools[source] = pools
        extra = set(self.p["patterns"]) - set(flip)
        if extra:
            raise self.bad_param("patterns", f"{sorted(extra)} are not source labels of `flip`")

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        key, raw = label_key_or_unfit(self, sample)
        answer_label_words(self, sample, key, a)
        target = self.p["flip"].get(key)
        text = sample.messages[u].content
        s, e = input_span(text, sample.meta)
        sentence = text[s:e]
        if target is None or len(split_sentences(sentence)) != 1 or NEGATION.search(EMPHATIC.sub("", sentence)):
            return []
        answer = _relabel(self, sample, a, key, target)
        if answer is None:
            return []
        core = re.sub(r"[。！？!?.…~～]+$", "", sentence.strip())
        lang = "zh" if has_cjk(core) else "en"
        pool = [p for p in self.pools[key][lang] if not (p in THIRD_PERSON_ONLY and _FIRST_PERSON.match(core))]
        if not pool:
            return []
        pattern = rng.choice(pool)
        flipped = pattern.replace("{x}", core if lang == "zh" else _lower_first(core))
        new = clone(sample)
        new.messages[u].content = text[:s] + flipped + text[e:]
        new.messages[a].content = answer
        new.meta["label"] = self.labels.meta_value(raw, target)
        if isinstance(new.meta.get("input"), str):
            new.meta["input"] = flipped
        new.meta["hard_negative_of"] = sample.source
        return [record(new, self.name, pattern=pattern, flip=f"{key}->{target}")]


BOUNDARY_TEMPLATES = {
    "zh": ["不好不坏。", "谈不上喜欢，也谈不上讨厌。", "{subject}还行吧，没什么特别的。",
           "{subject}一般般，说不上好也说不上差。", "{subject}有优点也有缺点，总体中规中矩。"],
    "en": ["Neither good nor bad.", "I neither like nor dislike it.", "{subject} was okay, nothing special.",
           "{subject} has its ups and downs; overall it is average.", "{subject} is fine, I guess. Not great, not bad."],
}
SUBJECTS = {"zh": ["这部电影", "这家餐厅", "这个产品", "这次服务", "这本书"],
            "en": ["The movie", "The restaurant", "This product", "The service", "The book"]}


# Mixed evidence: a clause of this record beside a clause of a record with another label.
MIXED_PATTERNS = {"zh": ["{a}，不过{b}。", "{a}，但是{b}。", "虽然{a}，但{b}。"],
                  "en": ["{a}, but {b}.", "{a}; on the other hand, {b}.", "Although {a}, {b}."]}


@register
class BoundaryCase(Transform):
    """A new sample with the same instruction and an ambiguous input, labelled with the neutral label.

    With `source: auto` (the default) or `sample`, the input is built from the user's own records:
    this record's sentence joined to the sentence of a record with another (non-neutral) label in
    the same language, "服务太糟糕了，不过我对这个结果感到高兴。" — evidence both ways, so neutral
    (the recipe shows the transform all its input first; see `observe`). `auto` falls back to the
    templates (`{subject}` drawn from `subjects`) when no such pair exists (a neutral record, a
    multi-sentence input, one label only); `sample` then makes nothing; `templates` never pairs.
    The answer keeps its wording with the label word moved to the neutral label's matching word.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> from honed.data.augment import LabelSet
    >>> ls = LabelSet.from_config({"positive": ["积极"], "negative": ["消极"], "neutral": ["中性"]})
    >>> s = Conversation([Message("user", "情感：\\n这部电影很好看"), Message("assistant", "类别：积极")], meta={"label": "positive"})
    >>> new = BoundaryCase({"templates": {"zh": ["不好不坏。"]}, "replace_templates": True}, labels=ls)(s, random.Random(0))[0]
    >>> new.messages[0].content, new.messages[1].content, new.meta["label"]
    ('情感：\\n不好不坏。', '类别：中性', 'neutral')
    """

    name, family, expands, needs_labels = "boundary_case", "negatives", True, True
    defaults = {"neutral": "neutral", "source": "auto", "templates": {}, "replace_templates": False, "subjects": {},
                "patterns": {}}
    choices = {"source": ("auto", "sample", "templates")}

    def setup(self):
        if self.p["neutral"] not in self.labels.words:
            raise self.bad_param("neutral", f"{self.p['neutral']!r} is not a label of the recipe; "
                                            f"labels: {', '.join(self.labels.words)}")
        self.templates, self.subjects, self.patterns = {}, {}, {}
        for lang in BOUNDARY_TEMPLATES:
            own = self.p["templates"].get(lang, [])
            self.templates[lang] = own if self.p["replace_templates"] else [*BOUNDARY_TEMPLATES[lang], *own]
            self.subjects[lang] = self.p["subjects"].get(lang) or SUBJECTS[lang]
            self.patterns[lang] = self.p["patterns"].get(lang) or MIXED_PATTERNS[lang]
            bad = [p for p in self.patterns[lang] if "{a}" not in p or "{b}" not in p]
            if bad:
                raise self.bad_param(f"patterns.{lang}", f"{bad[0]!r} needs both {{a}} and {{b}}")
        for key in ("templates", "subjects", "patterns"):
            if set(self.p[key]) - set(BOUNDARY_TEMPLATES):
                raise self.bad_param(key, f"languages are {', '.join(BOUNDARY_TEMPLATES)}")
        self.clauses: dict[str, dict[str, list[tuple[str, str]]]] = {}  # lang → label → [(clause, source)]

    def _clause(self, sample) -> tuple[str, str, str] | None:
        """(label key, language, the input as one clause without its end mark), or None."""
        raw = sample.meta.get("label")
        key = self.labels.key_of(raw) if raw is not None else None
        u = next((i for i in range(len(sample.messages) - 1, -1, -1) if sample.messages[i].role == "user"), None)
        if key is None or key == self.p["neutral"] or u is None:
            return None
        text = sample.messages[u].content
        s, e = input_span(text, sample.meta)
        if len(split_sentences(text[s:e])) != 1:
            return None
        core = re.sub(r"[。！？!?.…~～]+$", "", text[s:e].strip())
        return (key, lang_of(core), core) if core else None

    def observe(self, samples) -> None:
        """Collect each in-domain record's one-sentence input by label and language."""
        self.clauses = {}
        if self.p["source"] == "templates":
            return
        for sample in samples:
            found = self._clause(sample)
            if found:
                key, lang, core = found
                self.clauses.setdefault(lang, {}).setdefault(key, []).append((core, sample.source or ""))

    def _mixed(self, sample, rng: random.Random):
        found = self._clause(sample)
        if not found:
            return None
        key, lang, core = found
        others = [c for label, pool in sorted(self.clauses.get(lang, {}).items()) if label != key
                  for c in pool if c[0] != core]
        if not others:
            return None
        other, other_source = rng.choice(others)
        first, second = (core, other) if rng.random() < 0.5 else (other, core)
        pattern = rng.choice(self.patterns[lang])
        if lang == "en":
            first = first if pattern.startswith("{a}") else _lower_first(first)
            second = _lower_first(second)
        return pattern.replace("{a}", first).replace("{b}", second), {"pattern": pattern, "paired_with": other_source}

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        key, raw = label_key_or_unfit(self, sample)
        answer_label_words(self, sample, key, a)
        answer = _relabel(self, sample, a, key, self.p["neutral"])
        if answer is None:
            return []
        text = sample.messages[u].content
        s, e = input_span(text, sample.meta)
        mixed = self._mixed(sample, rng) if self.p["source"] != "templates" else None
        if mixed is not None:
            ambiguous, details = mixed
        elif self.p["source"] == "sample":
            return []
        else:
            lang = lang_of(text[s:e])
            tpl = rng.choice(self.templates[lang])
            ambiguous, details = tpl.replace("{subject}", rng.choice(self.subjects[lang])), {"template": tpl}
        new = clone(sample)
        new.messages[u].content = text[:s] + ambiguous + text[e:]
        new.messages[a].content = answer
        new.meta["label"] = self.labels.meta_value(raw, self.p["neutral"])
        if isinstance(new.meta.get("input"), str):
            new.meta["input"] = ambiguous
        new.meta["boundary_of"] = sample.source
        return [record(new, self.name, **details)]
