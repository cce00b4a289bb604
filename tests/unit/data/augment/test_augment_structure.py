"""Shuffle promises: outputs are permutations of the same examples, blocks and sentences."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from honed.data import Conversation, Message
from honed.data.augment import Unfit, get_transform
from honed.data.augment.base import split_sentences
from honed.data.augment.structure import EXAMPLE_MARKER, component_spans, example_spans


def examples_of(text, **kw):
    return [text[s:e] for s, e in example_spans(text, kw.get("marker", EXAMPLE_MARKER), kw.get("delimiter"))]


def test_prompt_examples_are_permuted_with_headings_in_order(fewshot):
    s = fewshot[0]
    t = get_transform("shuffle_examples")
    orders = set()
    for seed in range(10):
        out = t(s, random.Random(seed))
        before, after = examples_of(s.messages[0].content), examples_of(out.messages[0].content)
        assert Counter(before) == Counter(after) and before != after
        text = out.messages[0].content
        assert text.index("示例1") < text.index("示例2") < text.index("示例3")
        assert text.endswith("现在请判断：剧情紧凑") and out.messages[1].content == "积极"
        orders.add(tuple(after))
    assert len(orders) > 1


def test_delimited_examples_are_permuted(fewshot):
    s = fewshot[2]
    out = get_transform("shuffle_examples", {"delimiter": "###"})(s, random.Random(3))
    before = examples_of(s.messages[0].content, delimiter="###")
    after = examples_of(out.messages[0].content, delimiter="###")
    assert len(before) == 3 and Counter(before) == Counter(after) and before != after
    assert out.messages[0].content.startswith("Classify.\n###") and out.messages[0].content.endswith("Input: superb")


def test_turn_pair_examples_are_permuted_as_pairs(fewshot):
    s = fewshot[1]
    out = get_transform("shuffle_examples")(s, random.Random(0))
    pairs = lambda c: [(c.messages[i].content, c.messages[i + 1].content) for i in range(1, 7, 2)]  # noqa: E731
    assert Counter(pairs(out)) == Counter(pairs(s)) and pairs(out) != pairs(s)
    assert out.messages[0].role == "system" and out.messages[-2].content == "loved it"
    assert out.roles() == s.roles()


def test_no_examples_is_unfit_naming_source():
    s = Conversation([Message("user", "Just a question?"), Message("assistant", "yes")], source="q.jsonl:5")
    with pytest.raises(Unfit, match="q.jsonl:5"):
        get_transform("shuffle_examples")(s, random.Random(0))


def test_components_are_permuted_and_question_stays_last():
    text = "# 角色\n你是医学检验顾问。\n\n# 任务\n解释检验指标。\n\n# 背景\n患者45岁。\n\n# 问题\nHbA1c 7.2% 说明什么？"
    s = Conversation([Message("user", text), Message("assistant", "提示血糖控制欠佳。")])
    blocks = lambda t: [t[a:b] for a, b in component_spans(t)]  # noqa: E731
    seen = set()
    for seed in range(8):
        out = get_transform("shuffle_components")(s, random.Random(seed))
        new = out.messages[0].content
        assert Counter(blocks(new)) == Counter(blocks(text)) and new != text
        assert blocks(new)[-1] == "# 问题\nHbA1c 7.2% 说明什么？"
        seen.add(new)
    assert len(seen) > 1


def test_components_split_at_blank_lines_and_can_take_the_system_prompt():
    s = Conversation([Message("system", "You are terse."), Message("user", "Task: classify.\n\nContext: a shop review.\n\nText: good"),
                      Message("assistant", "positive")])
    out = get_transform("shuffle_components", {"include_system": True})(s, random.Random(1))
    assert out.roles() == ["user", "assistant"]
    parts = out.messages[0].content.split("\n\n")
    assert Counter(parts) == Counter(["You are terse.", "Task: classify.", "Context: a shop review.", "Text: good"])
    assert parts[-1] == "Text: good"


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_context_rotation_moves_the_key_sentence_and_keeps_all_sentences(contexts, position):
    for s in contexts:
        out = get_transform("rotate_context", {"position": position})(s, random.Random(0))
        before = split_sentences(s.messages[0].content.split("\n\n")[0])
        after = split_sentences(out.messages[0].content.split("\n\n")[0])
        assert Counter(before) == Counter(after)
        key = next(x for x in before if "Friday" in x or "周五" in x)
        want = {"start": 0, "middle": (len(after) - 1) // 2, "end": len(after) - 1}[position]
        assert after.index(key) == want
        assert out.messages[0].content.split("\n\n")[1] == s.messages[0].content.split("\n\n")[1]


def test_context_rotation_random_always_moves_and_uses_meta_key(contexts):
    s = contexts[0]
    s.meta["key_sentence"] = "预算已经获得批准"
    for seed in range(5):
        out = get_transform("rotate_context")(s, random.Random(seed))
        moved = out.meta["augmentations"][-1]["details"]
        assert moved["key_from"] == 2 and moved["key_to"] != 2


def test_context_rotation_without_key_is_unfit():
    s = Conversation([Message("user", "甲。乙。丙。丁。\n\n问题？"), Message("assistant", "xyz")], source="c:3")
    with pytest.raises(Unfit, match="c:3"):
        get_transform("rotate_context")(s, random.Random(0))
