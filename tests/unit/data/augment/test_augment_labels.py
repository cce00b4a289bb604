"""Classification promises: labels kept under rewording, flipped exactly when intended, neutral cases."""

from __future__ import annotations

import random

import pytest

from honed.data import Conversation, Message
from honed.data.augment import LabelSet, Unfit, get_transform
from honed.data.augment.base import input_span
from honed.errors import ConfigError

FLIP = {"positive": "negative", "negative": "positive"}


@pytest.fixture
def ls(labels):
    return LabelSet.from_config(labels)


def answer_keys(ls, sample):
    """Label keys named in the answer."""
    return {ls.key_of(m.group()) for m in ls.pattern.finditer(sample.messages[-1].content)}


def test_label_synonym_keeps_label_and_rewords_answer_and_options_together(ls, sentiment):
    t = get_transform("label_synonym", labels=ls)
    changed = 0
    for seed in range(5):
        for s in sentiment:
            out = t(s, random.Random(seed))
            assert out.meta["label"] == s.meta["label"]
            assert answer_keys(ls, out) == {s.meta["label"]}
            changed += out.messages[-1].content != s.messages[-1].content
            # The input text is data, not a label name: it stays as written.
            text = out.messages[1].content
            assert text.endswith(s.meta["input"])
            # The option list names each label exactly once, with words of one parallel position.
            options = [ls.key_of(m.group()) for m in ls.pattern.finditer(text[: input_span(text, out.meta)[0]])]
            assert sorted(options) == ["negative", "neutral", "positive"]
            answer_word = next(ls.pattern.finditer(out.messages[-1].content)).group()
            assert answer_word in text  # the answer uses the word the instruction offers
    assert changed == 5 * len(sentiment)  # a drawn step always changes the wording


def test_label_synonym_same_script_keeps_language(ls, sentiment):
    t = get_transform("label_synonym", labels=ls)
    for s in sentiment:
        out = t(s, random.Random(0))
        zh_before = any("\u4e00" <= c <= "\u9fff" for c in s.messages[-1].content)
        zh_after = any("\u4e00" <= c <= "\u9fff" for c in out.messages[-1].content)
        assert zh_before == zh_after


def test_label_synonym_without_label_is_unfit_naming_source(ls):
    s = Conversation([Message("user", "hi"), Message("assistant", "积极")], source="d.jsonl:4")
    with pytest.raises(Unfit, match="d.jsonl:4"):
        get_transform("label_synonym", labels=ls)(s, random.Random(0))
    s.meta["label"] = "angry"
    with pytest.raises(Unfit, match="angry"):
        get_transform("label_synonym", labels=ls)(s, random.Random(0))


def test_label_expression_keeps_label_and_uses_a_template(ls, sentiment):
    t = get_transform("label_expression", {"templates": ["分类结果为{label}。"]}, labels=ls)
    seen = set()
    for seed in range(60):
        for s in sentiment:
            out = t(s, random.Random(seed))
            assert answer_keys(ls, out) == {s.meta["label"]} and out.meta["label"] == s.meta["label"]
            assert out.messages[-1].content != s.messages[-1].content
            seen.add(out.meta["augmentations"][-1]["details"]["template"])
    assert "分类结果为{label}。" in seen and '{"output": "{label}"}' in seen


def test_label_expression_refuses_answers_with_explanations(ls):
    s = Conversation([Message("user", "情感？\n好看"), Message("assistant", "积极，因为用户说好看。")],
                     source="e.jsonl:2", meta={"label": "positive"})
    with pytest.raises(Unfit, match="e.jsonl:2"):
        get_transform("label_expression", labels=ls)(s, random.Random(0))


def test_hard_negative_flips_exactly_when_intended(ls, sentiment):
    t = get_transform("hard_negative", {"flip": FLIP}, labels=ls)
    made = 0
    for seed in range(4):
        for s in sentiment:
            new = t(s, random.Random(seed))
            for n in new:
                made += 1
                assert n.meta["label"] == FLIP[s.meta["label"]]
                assert answer_keys(ls, n) == {FLIP[s.meta["label"]]}
                # A look-alike: the original input survives inside the new one.
                core = s.meta["input"].rstrip("。.")
                assert core in n.messages[1].content or core[0].lower() + core[1:] in n.messages[1].content
                assert n.messages[1].content != s.messages[1].content
                assert n.meta["hard_negative_of"] == s.source
    assert made >= 2 * len(sentiment)


def test_hard_negative_of_the_guides_own_example_with_default_settings(ls):
    # "我对这个结果不能更高兴了" (could not be happier) is emphatic praise, not a negation.
    t = get_transform("hard_negative", {"flip": FLIP}, labels=ls)
    s = Conversation([Message("user", "情感：\n我对这个结果不能更高兴了"), Message("assistant", "积极")], meta={"label": "积极"})
    made = {t(s, random.Random(seed))[0].messages[0].content for seed in range(6)}
    # First person: the third-person contrast patterns are left out; the two denials remain.
    assert made == {"情感：\n我不能说我对这个结果不能更高兴了。", "情感：\n我没办法说我对这个结果不能更高兴了。"}
    assert t(s, random.Random(0))[0].messages[1].content == "消极"
    en = Conversation([Message("user", "Sentiment:\nThe staff couldn't be more helpful"), Message("assistant", "positive")],
                      meta={"label": "positive"})
    assert t(en, random.Random(1))[0].messages[1].content == "negative"
    # A real negation still stops it.
    no = Conversation([Message("user", "情感：\n我对这个结果不高兴"), Message("assistant", "消极")], meta={"label": "消极"})
    assert t(no, random.Random(0)) == []


def test_hard_negative_examples_from_the_guide(ls):
    t = get_transform("hard_negative", {"flip": FLIP, "patterns": {"positive": {"zh": ["我不能说{x}。"], "en": ["I can't say {x}."]}},
                                        "replace_patterns": True}, labels=ls)
    zh = Conversation([Message("user", "情感：\n我对这个结果感到高兴"), Message("assistant", "积极")], meta={"label": "积极"})
    out = t(zh, random.Random(0))[0]
    assert out.messages[0].content == "情感：\n我不能说我对这个结果感到高兴。"
    assert out.messages[1].content == "消极" and out.meta["label"] == "消极"  # meta keeps its form (word, not key)
    en = Conversation([Message("user", "Sentiment:\nI liked it"), Message("assistant", "Label: positive")], meta={"label": "positive"})
    out = t(en, random.Random(0))[0]
    assert out.messages[0].content.endswith("I can't say I liked it.") and out.messages[1].content == "Label: negative"


@pytest.mark.parametrize("text, label", [
    ("我不喜欢这部电影", "negative"),            # already negated: a second negation would be ambiguous
    ("This is not what I wanted", "negative"),
    ("很好看。演员也很棒。", "positive"),         # two sentences: negating one leaves the other
    ("不好不坏", "neutral"),                   # not in the flip map
])
def test_hard_negative_makes_nothing_when_a_flip_is_not_certain(ls, text, label):
    s = Conversation([Message("user", f"情感：\n{text}"), Message("assistant", ls.words[label][0])], meta={"label": label})
    assert get_transform("hard_negative", {"flip": FLIP}, labels=ls)(s, random.Random(0)) == []


def test_hard_negative_needs_patterns_for_unusual_labels():
    ls = LabelSet.from_config({"spam": ["spam"], "ham": ["ham"]})
    with pytest.raises(Exception, match="patterns.spam"):
        get_transform("hard_negative", {"flip": {"spam": "ham"}}, labels=ls)
    t = get_transform("hard_negative", {"flip": {"spam": "ham"}, "patterns": {"spam": {"en": ["It is false that {x}."]}}}, labels=ls)
    s = Conversation([Message("user", "Spam?\nYou won a prize"), Message("assistant", "spam")], meta={"label": "spam"})
    assert t(s, random.Random(0))[0].meta["label"] == "ham"


def test_boundary_cases_are_neutral_and_in_the_input_language(ls, sentiment):
    t = get_transform("boundary_case", labels=ls)
    for seed in range(3):
        for s in sentiment:
            (n,) = t(s, random.Random(seed))
            assert n.meta["label"] == "neutral" and answer_keys(ls, n) == {"neutral"}
            instruction = s.messages[1].content.rsplit("\n", 1)[0]
            assert n.messages[1].content.startswith(instruction)
            new_input = n.messages[1].content.rsplit("\n", 1)[1]
            assert (any("\u4e00" <= c <= "\u9fff" for c in new_input)
                    == any("\u4e00" <= c <= "\u9fff" for c in s.meta["input"]))
            assert n.meta["input"] == new_input


def test_negative_sample_shows_a_wrong_answer_and_the_correction(ls, sentiment):
    t = get_transform("negative_sample", labels=ls)
    for s in sentiment:
        (n,) = t(s, random.Random(1))
        bad = n.meta["bad_answer"]
        assert bad in n.messages[-2].content and s.messages[1].content in n.messages[-2].content
        assert answer_keys(ls, Conversation([Message("assistant", bad)])) != {s.meta["label"]}
        assert n.messages[-1].content.endswith(s.messages[-1].content)  # the correct answer closes it
        assert n.meta["label"] == s.meta["label"]


def test_negative_sample_number_and_given_strategies():
    s = Conversation([Message("user", "What is 6 times 7?"), Message("assistant", "6 times 7 is 42.")], source="m:1")
    (n,) = get_transform("negative_sample")(s, random.Random(0))
    assert n.meta["bad_answer"] != s.messages[1].content and n.messages[1].content.endswith("6 times 7 is 42.")
    plain = Conversation([Message("user", "Hello?"), Message("assistant", "Hi there.")], source="m:2")
    with pytest.raises(Unfit, match="m:2"):
        get_transform("negative_sample")(plain, random.Random(0))


def test_boundary_cases_are_built_from_the_users_own_records(labels, sentiment):
    from honed.data.augment import Recipe

    recipe = Recipe.from_config({"seed": 3, "labels": labels, "steps": [{"name": "boundary_case"}]})
    made = [o for o in recipe.apply(sentiment) if o.meta.get("boundary_of")]
    inputs = [o.meta["input"] for o in made]
    # Each pairs this record's sentence with one of another label, in its language, seeded.
    assert inputs[:2] == ["虽然我对这个结果感到高兴，但服务太糟糕了，等了一个小时。",
                          "服务太糟糕了，等了一个小时，但是这部电影非常精彩，我十分喜欢。"]
    assert inputs[4:6] == ["I liked it a lot; on the other hand, it was a terrible waste of money.",
                           "Although the food was awful, the movie was great and the actors were excellent."]
    assert [o.meta["augmentations"][0]["details"]["paired_with"] for o in made[:2]] == [
        "sentiment.jsonl:3", "sentiment.jsonl:3"]
    assert {o.meta["label"] for o in made} == {"neutral"} and len(made) == len(sentiment)
    assert [o.messages[-1].content for o in made[:2]] == ["中性", "类别：中性"]  # the answer's wording kept


def test_boundary_case_falls_back_to_templates_or_makes_nothing(ls, sentiment):
    from honed.data.augment.negatives import BOUNDARY_TEMPLATES

    only_positive = [s for s in sentiment if s.meta["label"] == "positive"]
    auto = get_transform("boundary_case", labels=ls)
    auto.observe(only_positive)  # one label only: nothing to pair with
    (n,) = auto(only_positive[0], random.Random(0))
    assert n.meta["augmentations"][0]["details"]["template"] in BOUNDARY_TEMPLATES["zh"]
    strict = get_transform("boundary_case", {"source": "sample"}, labels=ls)
    strict.observe(only_positive)
    assert strict(only_positive[0], random.Random(0)) == []
    strict.observe(sentiment)
    (n,) = strict(only_positive[0], random.Random(0))
    assert n.meta["augmentations"][0]["details"]["paired_with"] in {"sentiment.jsonl:3"}
    with pytest.raises(ConfigError, match=r"params.patterns.en: .*needs both \{a\} and \{b\}"):
        get_transform("boundary_case", {"patterns": {"en": ["{a} only"]}}, labels=ls)
