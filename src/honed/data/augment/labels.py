"""Structure level, labels: category-name randomisation (1) and label-expression diversification (2).

Both keep `meta["label"]` as it was: the concept stays, only its wording changes.
"""

from __future__ import annotations

import random
import re

from honed.data.augment.base import (Transform, clone, has_cjk, input_span, match_case, record, register,
                                     turn_indices)
from honed.data.conversation import Conversation


def label_key_or_unfit(t: Transform, sample: Conversation) -> tuple[str, object]:
    """The sample's label key, or Unfit naming the source when it has none in the recipe's set."""
    key, raw = t.labels.label_of(sample)
    if raw is None:
        raise t.unfit(sample, 'it has no meta["label"]; label transforms need classification samples')
    if key is None:
        raise t.unfit(sample, f'meta["label"]={raw!r} is not in the recipe labels ({", ".join(t.labels.words)})')
    return key, raw


def answer_label_words(t: Transform, sample: Conversation, key: str, a: int) -> list[re.Match]:
    """Occurrences of the sample's own label words in its answer; Unfit when there are none."""
    hits = [m for m in t.labels.pattern.finditer(sample.messages[a].content) if t.labels.key_of(m.group()) == key]
    if not hits:
        raise t.unfit(sample, f"the answer {sample.messages[a].content[:60]!r} names none of the words of "
                              f"label {key!r} ({', '.join(t.labels.words_of(key))})")
    return hits


@register
class LabelSynonym(Transform):
    """Replace each label word by a synonym of the same label, in the answer and the instruction.

    One synonym is drawn per (label, script) for the whole sample, so an instruction listing
    "积极/消极" and an answer "积极" change together (e.g. to "正面/负面" and "正面"). Words in the
    input text itself are left alone: they are data, not label names. `same_script` keeps Chinese
    words Chinese and English words English; `parallel` takes the same position in every label's
    list (lists are written in parallel: 积极/消极, 正面/负面), so the options stay a matched set.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> from honed.data.augment import LabelSet
    >>> t = LabelSynonym(labels=LabelSet.from_config({"positive": ["积极", "正面"], "negative": ["消极", "负面"]}))
    >>> s = Conversation([Message("user", "情感（积极/消极）：\\n好看"), Message("assistant", "积极")], meta={"label": "positive"})
    >>> out = t(s, random.Random(3)); out.meta["label"], out.messages[1].content in ("积极", "正面")
    ('positive', True)
    """

    name, family, needs_labels = "label_synonym", "labels", True
    defaults = {"same_script": True, "parallel": True, "include_system": True}

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        key, _ = label_key_or_unfit(self, sample)
        current = answer_label_words(self, sample, key, a)[0].group()
        chosen: dict[tuple[str, bool], str] = {}
        slot: dict[bool, float] = {}
        own = [w for w in self.labels.words[key] if not self.p["same_script"] or has_cjk(w) == has_cjk(current)]
        others = [i for i, w in enumerate(own) if w.lower() != current.lower()]
        if self.p["parallel"] and others:
            # Draw a position other than the answer's current word, so a drawn step always changes it.
            slot[has_cjk(current)] = (rng.choice(others) + 0.5) / len(own)
        elif others:
            chosen[(key, has_cjk(current))] = own[rng.choice(others)]

        def pick(word: str) -> str:
            k, cjk = self.labels.key_of(word), has_cjk(word)
            if (k, cjk) not in chosen:
                pool = self.labels.words[k]
                if self.p["same_script"]:
                    pool = [w for w in pool if has_cjk(w) == cjk] or pool
                if self.p["parallel"]:
                    # One position per script for all labels: 积极/消极 → 正面/负面, never 正面/悲观.
                    slot.setdefault(cjk, rng.random())
                    chosen[(k, cjk)] = pool[int(slot[cjk] * len(pool))]
                else:
                    chosen[(k, cjk)] = rng.choice(pool)
            return match_case(word, chosen[(k, cjk)]) if not cjk else chosen[(k, cjk)]

        def sub(text: str) -> str:
            return self.labels.pattern.sub(lambda m: pick(m.group()), text)

        out = clone(sample)
        out.messages[a].content = sub(out.messages[a].content)
        text = out.messages[u].content
        s, e = input_span(text, sample.meta)
        out.messages[u].content = sub(text[:s]) + text[s:e] + sub(text[e:])
        if self.p["include_system"]:
            for m in out.messages:
                if m.role == "system":
                    m.content = sub(m.content)
        return record(out, self.name, chosen={f"{k}/{'zh' if cjk else 'en'}": w for (k, cjk), w in sorted(chosen.items())})


# The `{label}` placeholder is filled with str.replace, so JSON braces in a template need no escaping.
EXPRESSIONS = {
    "zh": ["{label}", "类别：{label}", "情感类别：{label}", "这是一个{label}的陈述。", "这句话的情感是{label}。",
           "分类结果：{label}", "答案：{label}", '{"output": "{label}"}', '{"label": "{label}"}'],
    "en": ["{label}", "Label: {label}", "Category: {label}", "The sentiment is {label}.",
           "This is a {label} statement.", "Answer: {label}", '{"output": "{label}"}', '{"label": "{label}"}'],
}


ASK = {"en": "Answer in this form: {form}", "en_bare": "Answer with the label only.",
       "zh": "请按此格式回答：{form}", "zh_bare": "只回答类别名称。"}
PLACEHOLDER = {"en": "<label>", "zh": "<类别>"}


@register
class LabelExpression(Transform):
    """Re-express a classification answer with another template: `类别：积极` → `这是一个积极的陈述。`.

    Only answers that ARE a label expression (one of the templates, or the bare label word) are
    rewritten, so an answer with an explanation is never cut down; other answers are unfit (add
    their pattern to `templates`). Templates hold `{label}`; `templates` adds to the built-in ones
    (`replace_templates: true` uses only yours). The label word keeps its language: Chinese label
    words go into Chinese templates. With `ask: true` the instruction gets a first line naming the
    form ("Answer in this form: {"label": <label>}"; wording in `ask_templates`, keys en, en_bare,
    zh, zh_bare), so the model learns to answer in the form it is asked for.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> from honed.data.augment import LabelSet
    >>> t = LabelExpression({"templates": ["Label: {label}"], "replace_templates": True},
    ...                     labels=LabelSet.from_config({"positive": ["positive"], "negative": ["negative"]}))
    >>> s = Conversation([Message("user", "Sentiment?\\nI liked it"), Message("assistant", "positive")], meta={"label": "positive"})
    >>> t(s, random.Random(0)).messages[1].content
    'Label: positive'
    """

    name, family, needs_labels = "label_expression", "labels", True
    defaults = {"templates": [], "replace_templates": False, "ask": False, "ask_templates": {}}

    def setup(self):
        bad = sorted(set(self.p["ask_templates"]) - set(ASK))
        if bad:
            raise self.bad_param(f"ask_templates.{bad[0]}", f"unknown key; valid: {', '.join(ASK)}")
        for tpl in self.p["templates"]:
            if not isinstance(tpl, str) or "{label}" not in tpl:
                raise self.bad_param("templates", f"every template needs a {{label}} placeholder, got {tpl!r}")
        own = list(self.p["templates"])
        self.pools = {lang: list(dict.fromkeys(own if self.p["replace_templates"] else [*tpls, *own]))
                      for lang, tpls in EXPRESSIONS.items()}
        for lang in self.pools:  # user templates go to the language they are written in
            self.pools[lang] = [t for t in self.pools[lang] if lang_fits(t, lang)] or self.pools[lang]
        self.known = [t for tpls in (*EXPRESSIONS.values(), own) for t in tpls]

    def _matches_known(self, answer: str, word_re: str) -> bool:
        for tpl in self.known:
            rx = re.escape(tpl.strip()).replace(re.escape("{label}"), f"(?:{word_re})")
            if re.fullmatch(rx, answer.strip(), re.IGNORECASE):
                return True
        return False

    def apply(self, sample, rng: random.Random):
        _, a = turn_indices(self, sample)
        key, _ = label_key_or_unfit(self, sample)
        hits = answer_label_words(self, sample, key, a)
        word = hits[0].group()
        word_re = "|".join(re.escape(w) for w in self.labels.all_words())
        answer = sample.messages[a].content
        if not self._matches_known(answer, word_re):
            raise self.unfit(sample, f"the answer {answer[:60]!r} is not a plain label expression; "
                                     "add its pattern (with {label}) to params.templates")
        lang = "zh" if has_cjk(word) else "en"
        current = answer.strip()
        pool = [t for t in self.pools[lang] if t.replace("{label}", word) != current] or self.pools[lang]
        tpl = rng.choice(pool)
        out = clone(sample)
        out.messages[a].content = tpl.replace("{label}", word)
        if self.p["ask"]:
            # Say the expected form in the instruction: without it the model cannot know which
            # form is wanted and learns to pick one at random; with it, it learns to follow the ask.
            u = turn_indices(self, sample)[0]
            asks = {**ASK, **self.p["ask_templates"]}
            form = tpl.replace("{label}", PLACEHOLDER[lang])
            line = asks[f"{lang}_bare"] if tpl.strip() == "{label}" else asks[lang].replace("{form}", form)
            out.messages[u].content = f"{line}\n{out.messages[u].content}"
        return record(out, self.name, template=tpl)


def lang_fits(template: str, lang: str) -> bool:
    """A template fits a language when its non-placeholder text is in that script (or has none)."""
    rest = re.sub(r"[\W\d_]+", "", template.replace("{label}", ""), flags=re.UNICODE)
    if not rest or rest in ("output", "label"):
        return True
    return has_cjk(rest) == (lang == "zh")
