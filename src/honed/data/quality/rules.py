"""Rule filters: text length, language and regular expressions over a sample's text.

Language is told by a real identifier (honed.utils.language: lingua, CJK by script), so French
and German are not taken for English: the question a filter asks is "is this in a language my
model is trained for".

>>> detect_language("这部电影非常精彩"), detect_language("What does this blood test measure?"), detect_language("Was misst dieser Bluttest?")
('zh', 'en', 'de')
"""

from __future__ import annotations

import re

from honed.data.conversation import Conversation
from honed.data.formats import empty_answer
from honed.utils.language import identify_language

def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's language ('' for none): honed.utils.language.identify_language."""
    return identify_language(text)


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
