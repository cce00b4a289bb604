"""Seeded, deterministic, meaning-preserving transforms that diversify SFT data.

One module per family (see the 004 data-diversity guide):

- labels     structure level: label_synonym (1), label_expression (2)
- formats    structure level: output_format (3), plus parse_structured / render_structured
- structure  structure level: shuffle_examples (4), shuffle_components (5), rotate_context (6)
- negatives  negative_sample (7), hard_negative (12), boundary_case (13)
- synthetic  reserved place for generator-model data (8)
- lexical    text level: synonym_replace (9), rewrite_sentence (10)
- noise      text level: noise (11), user text only
- prompt     prompt level: system_prompt, turn_delimiters (14)

A Recipe chains steps with probabilities and gives the same output for the same seed/epoch:

>>> from honed.data import Conversation, Message
>>> recipe = Recipe.from_config({
...     "labels": {"positive": ["积极", "正面", "positive"], "negative": ["消极", "负面", "negative"]},
...     "steps": [{"name": "label_synonym", "probability": 1.0}]})
>>> s = Conversation([Message("user", "情感（积极/消极）：\\n很好看"), Message("assistant", "积极")],
...                  meta={"label": "positive"})
>>> [x.messages[-1].content for x in recipe.apply([s], seed=0)] == [x.messages[-1].content for x in recipe.apply([s], seed=0)]
True
"""

from __future__ import annotations

from honed.data.augment.base import FAMILY_MODULES, TRANSFORMS, Transform, Unfit, get_transform, load_all, register
from honed.data.augment.labelset import LabelSet
from honed.data.augment.recipe import AugmentStats, Recipe, Step

def available() -> dict[str, str]:
    """Registry name → family, for `honed data augment --list` and error messages."""
    load_all()
    return {name: cls.family for name, cls in sorted(TRANSFORMS.items())}


def describe() -> list[dict]:
    """Every transform: name, family, what it does (its docstring's first line), its parameters
    with their defaults, and whether it needs a `labels:` map — for `honed data augment --list`."""
    load_all()
    out = []
    for name, cls in sorted(TRANSFORMS.items()):
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        out.append({"name": name, "family": cls.family, "description": " ".join(doc.split()),
                    "params": dict(cls.defaults), "needs_labels": cls.needs_labels,
                    "choices": {k: list(v) for k, v in cls.choices.items()}})
    return out


def parse_structured(text: str, fmt: str = "auto"):
    """See honed.data.augment.formats.parse_structured."""
    from honed.data.augment.formats import parse_structured as _parse

    return _parse(text, fmt)


def render_structured(data, fmt: str) -> str:
    """See honed.data.augment.formats.render_structured."""
    from honed.data.augment.formats import render_structured as _render

    return _render(data, fmt)


__all__ = ["AugmentStats", "LabelSet", "Recipe", "Step", "TRANSFORMS", "Transform", "Unfit", "available", "describe",
           "get_transform", "parse_structured", "register", "render_structured"]
