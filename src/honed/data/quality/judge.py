"""A judge model's quality score for each sample (0–1), from any generator honed can call.

The judge is asked with an editable template (`{prompt}`, `{answer}`) for one number from 0 to
10; the first number in its reply, divided by 10, is the score. A reply with no number is a
judge failure, reported (and the sample kept or dropped as `on_failure` says), never a guess.

>>> parse_score("Score: 8/10")
0.8
>>> parse_score("no idea") is None
True
"""

from __future__ import annotations

import re
from pathlib import Path

from honed.data.conversation import Message
from honed.data.quality.rules import sample_text

JUDGE_PROMPT = Path(__file__).parents[1] / "augment" / "resources" / "judge_prompt.txt"
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


_OUT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE)


def parse_score(reply: str | None, scale: float = 10.0) -> float | None:
    """A judge's 0–10 score as 0–1: an explicit "N/10" first, else the last number of the reply
    (a reply like "on a scale of 0 to 10 I give 8" names the scale before the score).

    >>> parse_score("On a scale of 0 to 10, I give 8."), parse_score("Score: 7/10, because 3 facts"), parse_score("none")
    (0.8, 0.7, None)
    """
    text = reply or ""
    m = _OUT_OF.search(text)
    numbers = _NUMBER.findall(text)
    if m is None and not numbers:
        return None
    value = float(m.group(1)) if m else float(numbers[-1])
    return max(0.0, min(1.0, value / scale))


def judge_scores(conversations, generator, template: str | None = None, seed: int = 0) -> list[float | None]:
    """One score per conversation (None where the judge gave no number, or in a dry run)."""
    from honed.data.augment.synthetic import read_template

    tpl = read_template(template, JUDGE_PROMPT, "filter.judge.template")
    out = []
    for i, conv in enumerate(conversations):
        prompt = tpl.replace("{prompt}", sample_text(conv, "prompt")).replace("{answer}", sample_text(conv, "answer"))
        out.append(parse_score(generator.complete([Message("user", prompt)], seed=seed + i)))
    return out
