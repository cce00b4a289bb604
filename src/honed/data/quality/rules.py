"""Rule filters: text length, language and regular expressions over a sample's text.

Language is told from the script of the letters (Chinese, Japanese, Korean, Cyrillic, Arabic,
Latin → en): the question a filter asks is "is this in a language my model is trained for",
and the script answers it without a model download.

>>> detect_language("这部电影非常精彩"), detect_language("What is TSH?"), detect_language("Что это?")
('zh', 'en', 'ru')
"""

from __future__ import annotations

import re

from honed.data.conversation import Conversation
from honed.data.formats import empty_answer

_SCRIPTS = [  # (language, character class), checked by share of letters
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("zh", re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("en", re.compile(r"[A-Za-z]")),
]


def detect_language(text: str) -> str:
    """The language whose script holds most of the text ('ja' wins over 'zh' once kana appear); '' for none."""
    # A CJK character carries about what a Latin word does, so it weighs as much as ~4 letters.
    counts = {lang: len(rx.findall(text)) * (4 if lang in ("ja", "ko", "zh") else 1) for lang, rx in _SCRIPTS}
    if counts["ja"]:  # Japanese mixes kanji with kana; kana only occur in Japanese
        return "ja"
    lang, n = max(counts.items(), key=lambda kv: kv[1])
    return lang if n else ""


def sample_text(conv: Conversation, part: str = "all") -> str:
    """The text a rule looks at: `all` non-system turns, `prompt` (user turns) or `answer` (assistant)."""
    roles = {"all": ("user", "assistant"), "prompt": ("user",), "answer": ("assistant",)}[part]
    return "\n".join(m.content for m in conv.messages if m.role in roles)


def rule_violation(conv: Conversation, rules) -> tuple[str, str] | None:
    """(rule, why) for the first rule the sample breaks, or None. `rules` is a RulesConfig."""
    if rules.empty_answer:
        why = empty_answer(conv)
        if why:
            return "empty_answer", why
    text = sample_text(conv, rules.text)
    n = len(text)
    if rules.min_chars is not None and n < rules.min_chars:
        return "min_chars", f"{n} characters < {rules.min_chars}"
    if rules.max_chars is not None and n > rules.max_chars:
        return "max_chars", f"{n} characters > {rules.max_chars}"
    answer = sample_text(conv, "answer")
    if rules.min_answer_chars is not None and len(answer.strip()) < rules.min_answer_chars:
        return "min_answer_chars", f"answer has {len(answer.strip())} characters < {rules.min_answer_chars}"
    if rules.languages:
        lang = detect_language(text)
        if lang not in rules.languages:
            return "languages", f"language {lang or 'none'!r} not in {rules.languages}"
    for rx in rules.drop_regex:
        m = re.search(rx, text)
        if m:
            return "drop_regex", f"matches {rx!r} at {m.group()[:40]!r}"
    for rx in rules.require_regex:
        if not re.search(rx, text):
            return "require_regex", f"does not match {rx!r}"
    return None
