"""Format promises: every conversion parses back to the same content; the instruction asks for it."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from honed.data import Conversation, Message
from honed.data.augment import Unfit, get_transform, parse_structured, render_structured
from honed.data.augment.formats import FORMATS, MENTIONS, NAMES, FormatError, detect_format, normalize

CONTENTS = [
    {"label": "积极", "score": 0.9},
    {"name": "HbA1c", "unit": "%", "normal": "4.0-5.6", "fasting": False, "note": None},
    # Strings that look like other types, pipes, colons, quotes, spaces: the hard cases.
    {"code": "007", "ratio": "0.5", "flag": "true", "text": "a | b", "when": "2024-01-05", "q": '"x"',
     "pad": " x ", "url": "http://a.b/c", "empty": ""},
    [{"drug": "metformin", "dose_mg": 500}, {"drug": "insulin", "dose_mg": None}],
    [{"k": "no", "v": -1.5e-3}],
]


@pytest.mark.parametrize("data", CONTENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_render_then_parse_gives_the_same_content(data, fmt):
    text = render_structured(data, fmt)
    assert parse_structured(text, fmt) == normalize(data)
    assert parse_structured(text, "auto") == normalize(data)


@pytest.mark.parametrize("src, dst", list(itertools.permutations(FORMATS, 2)))
def test_every_conversion_pair_round_trips(src, dst):
    for data in CONTENTS:
        converted = render_structured(parse_structured(render_structured(data, src), src), dst)
        assert parse_structured(converted, dst) == normalize(data)


def test_guide_example_markdown_table():
    assert render_structured({"label": "积极", "score": 0.9}, "markdown") == "| label | score |\n| --- | --- |\n| 积极 | 0.9 |"


@pytest.mark.parametrize("text, why", [
    ("not structured at all", "not JSON"),
    ('{"a": {"nested": 1}}', "nested"),
    ("| a | b |\n| x | y |", "--- row"),
    ('{"a": 1', "json"),
])
def test_unparseable_or_nested_content_raises(text, why):
    with pytest.raises(FormatError, match=why):
        parse_structured(text)


def test_output_format_transform_keeps_content_and_rewrites_instruction(structured):
    t = get_transform("output_format")
    targets = set()
    for seed in range(12):
        for s in structured:
            out = t(s, random.Random(seed))
            rec = out.meta["augmentations"][-1]["details"]
            src, dst = rec["from"], rec["to"]
            targets.add(dst)
            assert src != dst and out.messages[-1].content != s.messages[-1].content
            # Flat kv lines are valid YAML too, so either name is a correct reading of them.
            assert detect_format(out.messages[-1].content) in ({"kv", "yaml"} if dst in ("kv", "yaml") else {dst})
            assert parse_structured(out.messages[-1].content, dst) == parse_structured(s.messages[-1].content, src)
            prompt = out.messages[0].content
            lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in prompt) else "en"
            assert NAMES[dst][lang] in prompt
            assert not re.search(MENTIONS[src], prompt, re.IGNORECASE)
    assert targets == set(FORMATS)


def test_output_format_instruction_examples():
    s = Conversation([Message("user", "请以JSON格式输出情感和分数：这部电影很好看"),
                      Message("assistant", '{"label": "积极", "score": 0.9}')])
    out = get_transform("output_format", {"formats": ["markdown"]})(s, random.Random(0))
    assert out.messages[0].content == "请以Markdown 表格格式输出情感和分数：这部电影很好看"
    assert out.messages[1].content == "| label | score |\n| --- | --- |\n| 积极 | 0.9 |"
    plain = Conversation([Message("user", "Facts about Paris?"), Message("assistant", "city: Paris\ncountry: France")])
    out = get_transform("output_format", {"formats": ["json"]})(plain, random.Random(0))
    assert out.messages[0].content == "Facts about Paris?\n\nAnswer in JSON format."


def test_fenced_answers_stay_fenced(structured):
    out = get_transform("output_format", {"formats": ["yaml"]})(structured[1], random.Random(0))
    assert out.messages[1].content.startswith("```yaml\n") and out.messages[1].content.endswith("\n```")


def test_output_format_on_free_text_is_unfit_naming_source():
    s = Conversation([Message("user", "Tell me a joke"), Message("assistant", "Why did the chicken…")], source="j.jsonl:9")
    with pytest.raises(Unfit, match="j.jsonl:9"):
        get_transform("output_format")(s, random.Random(0))
