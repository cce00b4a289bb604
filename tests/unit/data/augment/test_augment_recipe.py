"""Recipe promises: parsing errors name the key, same seed → same output, unfit handling, no mutation."""

from __future__ import annotations

import copy
import doctest
import importlib
import random

import pytest

from honed.data import Conversation, Message
from honed.data.augment import AugmentStats, LabelSet, Recipe, Unfit, available, get_transform
from honed.errors import ConfigError, DataError

LABELS = {"positive": ["积极", "正面", "乐观", "positive", "favourable"],
          "negative": ["消极", "负面", "悲观", "negative", "unfavourable"],
          "neutral": ["中性", "中立", "一般", "neutral", "mixed"]}
FLIP = {"positive": "negative", "negative": "positive"}

FULL_RECIPE = """
on_unfit: skip
labels:
  positive: [积极, 正面, 乐观, positive, favourable]
  negative: [消极, 负面, 悲观, negative, unfavourable]
  neutral:  [中性, 中立, 一般, neutral, mixed]
steps:
  - {name: label_synonym, probability: 0.7}
  - {name: label_expression, probability: 0.5}
  - {name: synonym_replace, probability: 0.5, params: {rate: 0.5}}
  - {name: rewrite_sentence, probability: 0.5}
  - {name: hard_negative, probability: 0.5, params: {flip: {positive: negative, negative: positive}}}
  - {name: boundary_case, probability: 0.2, params: {neutral: neutral}}
  - {name: noise, probability: 0.5, params: {rate: 0.05}}
  - {name: system_prompt, probability: 0.5, params: {prompts: [你是情感分析助手。, You label sentiment.]}}
"""

# Parameters that make each registered transform buildable in the no-mutation sweep.
PARAMS = {"hard_negative": {"flip": FLIP}, "system_prompt": {"prompt": "You are an expert."},
          "noise": {"rate": 0.3}, "synonym_replace": {"rate": 1.0}}


def as_data(samples):
    return [(s.source, s.to_dict(), s.meta) for s in samples]


def test_yaml_recipe_parses_and_runs(sentiment):
    recipe = Recipe.from_yaml(FULL_RECIPE)
    assert [s.name for s in recipe.steps][:2] == ["label_synonym", "label_expression"]
    stats = AugmentStats()
    out = recipe.apply(sentiment, seed=3, stats=stats)
    assert stats.samples_in == len(sentiment) and stats.samples_out == len(out) >= len(sentiment)
    assert sum(s.applied for s in stats.steps) > 0
    assert all(isinstance(x, Conversation) for x in out)


def test_same_seed_same_output_other_seed_or_epoch_differs(sentiment, structured, fewshot, contexts):
    recipe = Recipe.from_yaml(FULL_RECIPE)
    batch = sentiment * 3
    a, b = recipe.apply(batch, seed=7), recipe.apply(batch, seed=7)
    assert as_data(a) == as_data(b)
    assert as_data(recipe.apply(batch, seed=8)) != as_data(a)
    assert as_data(recipe.apply(batch, seed=7, epoch=1)) != as_data(a)
    # The recipe's own seed is the default.
    seeded = Recipe.from_config({**__import__("yaml").safe_load(FULL_RECIPE), "seed": 7})
    assert as_data(seeded.apply(batch)) == as_data(a)


def test_draws_of_one_step_do_not_depend_on_later_steps(sentiment):
    one = Recipe.from_config({"labels": LABELS, "steps": [{"name": "label_synonym", "probability": 0.5}]})
    two = Recipe.from_config({"labels": LABELS, "steps": [{"name": "label_synonym", "probability": 0.5},
                                                         {"name": "system_prompt", "params": {"prompt": "X"}}]})
    first = [s.messages[-1].content for s in one.apply(sentiment, seed=1)]
    second = [s.messages[-1].content for s in two.apply(sentiment, seed=1)]
    assert first == second


def test_apply_needs_a_seed(sentiment):
    with pytest.raises(ConfigError, match="seed"):
        Recipe.from_config([{"name": "system_prompt", "params": {"prompt": "x"}}]).apply(sentiment)


@pytest.mark.parametrize("cfg, key, listed", [
    ({"steps": [{"name": "no_such_thing"}]}, "augment.steps[0].name", "label_synonym"),
    ({"steps": [{"name": "noise", "params": {"rat": 0.1}}]}, "augment.steps[0].params.rat", "rate"),
    ({"steps": [{"name": "noise", "prob": 0.1}]}, "augment.steps[0].prob", "probability"),
    ({"stepz": []}, "augment.stepz", "steps"),
    ({"steps": [{"name": "noise", "probability": 1.5}]}, "augment.steps[0].probability", "[0, 1]"),
    ({"steps": [{"name": "noise", "on_unfit": "ignore"}]}, "augment.steps[0].on_unfit", "skip"),
    ({"steps": [{"name": "noise", "params": {"rate": "high"}}]}, "augment.steps[0].params.rate", "float"),
    ({"steps": [{"name": "noise", "params": {"roles": ["assistant"]}}]}, "augment.steps[0].params.roles", "user"),
    ({"steps": [{"name": "output_format", "params": {"formats": ["xml"]}}]}, "params.formats", "json"),
    ({"steps": [{"name": "label_synonym"}]}, "augment.steps[0].params", "labels"),
    ({"labels": LABELS, "steps": [{"name": "hard_negative", "params": {"flip": {"positive": "bad"}}}]},
     "params.flip", "positive, negative, neutral"),
    ({"labels": LABELS, "steps": [{"name": "boundary_case", "params": {"neutral": "meh"}}]}, "params.neutral", "neutral"),
    ({"labels": {"a": ["x"], "b": ["x"]}, "steps": ["noise"]}, "augment.labels.b", "also names"),
    ({"steps": [{"name": "synthetic"}]}, "augment.steps[0].params.generator", "generator"),
    ({"steps": [{"name": "paraphrase", "params": {"generator": {"kind": "openai"}}}]}, "params.generator.base_url", "required"),
])
def test_bad_recipes_name_the_key_and_list_valid_values(cfg, key, listed):
    with pytest.raises(ConfigError) as err:
        Recipe.from_config(cfg)
    assert key in str(err.value) and listed in str(err.value)


def test_unknown_name_lists_every_registered_transform():
    with pytest.raises(ConfigError) as err:
        Recipe.from_config([{"name": "sinonym"}])
    for name in available():
        assert name in str(err.value)


def test_unfit_sample_raises_naming_its_source():
    s = Conversation([Message("user", "Hi"), Message("assistant", "Hello")], source="chat.jsonl:7")
    recipe = Recipe.from_config({"labels": LABELS, "steps": ["label_synonym"]})
    with pytest.raises(DataError) as err:
        recipe.apply([s], seed=0)
    assert "chat.jsonl:7" in str(err.value) and "label" in str(err.value) and "on_unfit" in str(err.value)


def test_skip_mode_counts_unfit_samples_and_passes_them_through(sentiment):
    unlabeled = [Conversation([Message("user", f"q{i}"), Message("assistant", "a")], source=f"u:{i}") for i in range(3)]
    recipe = Recipe.from_config({"labels": LABELS, "on_unfit": "skip", "steps": ["label_synonym"]})
    stats = AugmentStats()
    out = recipe.apply(unlabeled + sentiment, seed=0, stats=stats)
    assert stats.steps[0].unfit_skipped == 3 == stats.unfit_skipped
    assert stats.steps[0].unfit_examples[0].startswith("u:0")
    assert as_data(out[:3]) == as_data(unlabeled)
    assert stats.steps[0].applied == len(sentiment)


def test_step_level_on_unfit_overrides_recipe_default():
    s = Conversation([Message("user", "Hi"), Message("assistant", "Hello")], source="x:1")
    recipe = Recipe.from_config({"labels": LABELS, "on_unfit": "error",
                                 "steps": [{"name": "label_expression", "on_unfit": "skip"}]})
    assert recipe.apply([s], seed=0)[0] is s


def test_every_transform_leaves_its_input_untouched(sentiment, structured, fewshot, contexts):
    labels = LabelSet.from_config(LABELS)
    samples = sentiment + structured + fewshot + contexts
    for name in available():
        if name in ("synthetic", "paraphrase"):  # need a generator; tested in tests/unit/data/test_synthetic.py
            continue
        t = get_transform(name, PARAMS.get(name), labels=labels)
        for seed, s in enumerate(samples):
            before = copy.deepcopy(s)
            try:
                out = t(s, random.Random(seed))
            except Unfit:
                out = None
            assert s == before, f"{name} mutated {s.source}"
            for o in out if isinstance(out, list) else [out] if out is not None else []:
                if o is not s:
                    assert o.meta["augmentations"][-1]["name"] == name
                    assert o.meta is not s.meta and all(m is not n for m in o.messages for n in s.messages)


def test_expanding_steps_keep_the_original_and_feed_later_steps(sentiment):
    recipe = Recipe.from_config({"labels": LABELS, "steps": [
        {"name": "hard_negative", "params": {"flip": FLIP}},
        {"name": "system_prompt", "params": {"prompt": "SYS"}}]})
    stats = AugmentStats()
    out = recipe.apply(sentiment[:1], seed=0, stats=stats)
    assert len(out) == 2 and stats.steps[0].generated == 1
    assert out[0].meta["label"] == "positive" and out[1].meta["label"] == "negative"
    assert [a["name"] for a in out[1].meta["augmentations"]] == ["hard_negative", "system_prompt"]
    assert out[1].meta["hard_negative_of"] == sentiment[0].source


def test_keep_original_and_copies(sentiment):
    recipe = Recipe.from_config({"labels": LABELS, "keep_original": True, "copies": 2,
                                 "steps": [{"name": "label_synonym"}]})
    out = recipe.apply(sentiment[:2], seed=0)
    assert len(out) == 6 and out[0] is sentiment[0] and out[3] is sentiment[1]
    assert all("augmentations" in o.meta for o in (out[1], out[2], out[4], out[5]))


def test_only_filter_selects_by_source_and_label(sentiment):
    recipe = Recipe.from_config({"labels": LABELS, "steps": [
        {"name": "system_prompt", "params": {"prompt": "NEG"}, "only": {"label": ["negative"]}}]})
    out = recipe.apply(sentiment, seed=0)
    assert [o.messages[0].content == "NEG" for o in out] == [s.meta["label"] == "negative" for s in sentiment]
    recipe = Recipe.from_config([{"name": "system_prompt", "params": {"prompt": "S"}, "only": {"source": "other*"}}])
    assert recipe.apply(sentiment, seed=0)[0] is sentiment[0]


def test_registry_covers_the_guide_and_reserves_synthetic():
    assert {"label_synonym", "label_expression", "output_format", "shuffle_examples", "shuffle_components",
            "rotate_context", "negative_sample", "synthetic", "synonym_replace", "rewrite_sentence", "noise",
            "hard_negative", "boundary_case", "system_prompt", "turn_delimiters"} <= set(available())


@pytest.mark.parametrize("module", ["base", "labelset", "recipe", "labels", "formats", "structure", "negatives",
                                    "lexical", "noise", "prompt", "synthetic", "generator", "io", "__init__"])
def test_docstring_examples_run(module):
    mod = importlib.import_module("honed.data.augment" + ("" if module == "__init__" else f".{module}"))
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
