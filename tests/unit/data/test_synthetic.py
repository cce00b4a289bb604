"""Generator models: synthetic samples and paraphrases from a local HTTP stub and a tiny local model;
dry runs call nothing; bad replies are rejected with a reason."""

from __future__ import annotations

import json

import pytest

from honed.data import Conversation, Message
from honed.data.augment import Recipe
from honed.data.generators import GeneratorError, make_generator
from honed.data.augment.synthetic import synthesize
from honed.errors import ConfigError

EXAMPLES = [Conversation([Message("system", "You label sentiment."), Message("user", "Sentiment:\nI loved the show"),
                          Message("assistant", "positive")], source="ex:1", meta={"label": "positive"}),
            Conversation([Message("user", "Sentiment:\nThe food was cold"), Message("assistant", "negative")],
                         source="ex:2", meta={"label": "negative"})]


def scripted(replies):
    """A reply function that walks through `replies`, one per call."""
    it = iter(replies)
    return lambda body: next(it)


def test_synthesize_through_an_openai_compatible_endpoint(stub_server):
    replies = [json.dumps({"user": "Sentiment:\nThe staff were kind", "assistant": "positive", "label": "positive"}),
               "Sure! Here it is: " + json.dumps({"user": "Sentiment:\nIt broke in a day", "assistant": "negative", "label": "negative"}),
               json.dumps({"user": "Sentiment:\nMeh", "assistant": "so-so", "label": "mixed"}),        # label not in the examples
               json.dumps({"user": "Sentiment:\nI loved the show", "assistant": "positive", "label": "positive"}),  # a copy
               "no json at all"]
    url = stub_server(scripted(replies))
    gen = make_generator({"kind": "openai", "base_url": url, "model": "stub", "temperature": 0.5})
    result = synthesize(EXAMPLES, gen, n=5, seed=3, shots=2)
    assert [s.messages[-2].content for s in result.samples] == ["Sentiment:\nThe staff were kind", "Sentiment:\nIt broke in a day"]
    assert [s.meta["label"] for s in result.samples] == ["positive", "negative"]
    assert [why.split(" ")[0] for _, why in result.rejected] == ["label", "it", "the"]
    body = stub_server.calls[0]
    assert body["model"] == "stub" and body["temperature"] == 0.5 and "Example 1" in body["messages"][0]["content"]
    assert len({c["seed"] for c in stub_server.calls}) == 5  # each call seeded on its own


def test_dry_run_builds_the_prompts_and_calls_nothing(tmp_path, capsys):
    from honed.cli import main
    from honed.data.augment.io import write_conversations

    dry = make_generator({"kind": "dry_run"})
    result = synthesize(EXAMPLES, dry, n=3, seed=0, template="Make one more like these:\n{examples}\nKeys: {keys}")
    assert result.samples == [] and len(dry.prompts) == 3
    assert dry.prompts[0][0].content.startswith("Make one more like these:") and '"label"' in dry.prompts[0][0].content
    src = tmp_path / "ex.jsonl"
    write_conversations(src, EXAMPLES)
    assert main(["data", "synth", str(src), "--n", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "prompt 1" in out and "nothing called" in out


def test_recipe_steps_use_the_recipe_generator(stub_server):
    url = stub_server(lambda body: json.dumps({"user": "Sentiment:\nGreat value", "assistant": "positive", "label": "positive"})
                      if "JSON" in body["messages"][0]["content"] else "Honestly, I loved the show a lot")
    recipe = Recipe.from_config({"seed": 1, "labels": {"positive": ["positive"], "negative": ["negative"]},
                                 "generator": {"kind": "openai", "base_url": url, "model": "m"},
                                 "steps": [{"name": "synthetic", "params": {"n": 1}, "only": {"label": "positive"}},
                                           {"name": "paraphrase"}]})
    out = recipe.apply(EXAMPLES, seed=0)
    assert len(out) == 3
    assert out[0].messages[-2].content == "Sentiment:\nHonestly, I loved the show a lot"  # input rewritten, instruction kept
    assert out[1].meta["label"] == "positive" and out[1].meta["augmentations"][0]["name"] == "synthetic"


def test_paraphrase_keeps_protected_words_or_leaves_the_sample():
    class Fixed:
        def __init__(self, text):
            self.text, self.name = text, "fixed"

        def complete(self, messages, seed=None):
            return self.text

    from honed.data.augment.synthetic import Paraphrase

    s = Conversation([Message("user", "Classify:\nThe HbA1c test was fine"), Message("assistant", "ok")], meta={"protected": ["HbA1c"]})
    import random

    t = Paraphrase({"generator": {"kind": "dry_run"}})
    t.generator = Fixed("The test looked fine")          # drops the protected word → rejected
    assert t(s, random.Random(0)) is s
    t.generator = Fixed("The HbA1c result looked fine")
    assert t(s, random.Random(0)).messages[0].content == "Classify:\nThe HbA1c result looked fine"


def test_generator_errors_are_clear(stub_server):
    with pytest.raises(ConfigError, match="generator.kind"):
        make_generator({"kind": "gpt"})
    with pytest.raises(ConfigError, match="generator.model: required"):
        make_generator({"kind": "openai", "base_url": "http://x"})
    url = stub_server(lambda body: "x", status=400)
    with pytest.raises(GeneratorError, match="HTTP 400"):
        make_generator({"kind": "openai", "base_url": url, "model": "m", "retries": 0}).complete([Message("user", "hi")])
    with pytest.raises(GeneratorError, match="cannot connect"):
        make_generator({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "retries": 0, "timeout": 2}).complete(
            [Message("user", "hi")])


def test_local_kind_needs_honed_infer_loaded(monkeypatch):
    from honed.data import generators

    monkeypatch.delitem(generators._FACTORIES, "local", raising=False)
    with pytest.raises(ConfigError, match=r"recipe.generator.kind: local runs a model through honed.infer.*import honed.infer"):
        make_generator({"kind": "local", "path": "m"}, "recipe.generator")


def test_a_local_honed_model_can_be_the_generator(tiny_model_dir):
    import honed.infer  # noqa: F401 (registers the local kind, as the CLI and honed.train do)

    gen = make_generator({"kind": "local", "path": str(tiny_model_dir("qwen2")), "max_tokens": 8, "device": "cpu"})
    result = synthesize(EXAMPLES, gen, n=2, seed=0)
    # A random tiny model writes no valid JSON: both calls ran and were rejected with a reason.
    assert len(result.prompts) == 2 and result.samples == []
    assert result.rejected == [(0, "the reply holds no JSON object"), (1, "the reply holds no JSON object")]
