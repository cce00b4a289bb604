"""Training strategies: balance hits the weights, curriculum is easy→hard, mining replays the hard,
on-the-fly augmentation draws anew each epoch and the same for the same seed; state round-trips."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from honed.data import Conversation, Message
from honed.data.augment import Recipe
from honed.data.epochs import EpochData, ShapedEpochData
from honed.data.strategies import SamplingConfig
from honed.data.strategies.sampling import balanced_indices, curriculum_order, hard_replays
from honed.errors import ConfigError, DataError

RECIPE = {"seed": 5, "labels": {"positive": ["positive", "favourable", "good"], "negative": ["negative", "unfavourable", "bad"]},
          "steps": [{"name": "label_synonym", "probability": 0.7}, {"name": "label_expression", "probability": 0.7, "params": {"ask": True}}]}


def convs(n=24):
    out = []
    for i in range(n):
        lab = "positive" if i % 4 else "negative"  # 3:1 imbalance
        text = f"item {i} was {'nice' if lab == 'positive' else 'awful'}" + " really" * (i % 5)
        out.append(Conversation([Message("user", f"Sentiment, positive or negative:\n{text}"), Message("assistant", lab)],
                                source=f"t.jsonl:{i}", meta={"label": lab, "input": text}))
    return out


def fake_tokenize(batch):
    # One "token" per character: enough for lengths and for telling draws apart.
    return [SimpleNamespace(input_ids=[ord(ch) for ch in "|".join(m.content for m in c.messages)], source=c.source) for c in batch]


def shaped(sampling=None, recipe=None, mode="on_the_fly", seed=0, n=24):
    cs = convs(n)
    return ShapedEpochData(fake_tokenize(cs), seed=seed, metas=[c.meta for c in cs], conversations=cs, tokenize=fake_tokenize,
                           recipe=Recipe.from_config(recipe) if recipe else None, mode=mode,
                           sampling=SamplingConfig.model_validate(sampling) if sampling else None)


def test_balanced_sampling_hits_the_weights_each_epoch():
    values = ["pos"] * 90 + ["neg"] * 10
    for epoch in range(3):
        idx = balanced_indices(values, {"pos": 1, "neg": 1}, random.Random(epoch))
        assert Counter(values[i] for i in idx) == {"pos": 50, "neg": 50}
        assert len(set(i for i in idx if i < 90)) == 50  # majority under-sampled without repeats
    idx = balanced_indices(values, {"pos": 2, "neg": 1}, random.Random(0), size=300)
    assert Counter(values[i] for i in idx) == {"pos": 200, "neg": 100}
    assert balanced_indices(values, {"pos": 1, "neg": 1}, random.Random(0)) != balanced_indices(values, {"pos": 1, "neg": 1}, random.Random(1))


def test_balance_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"\['neg'\] with no weight"):
        balanced_indices(["pos", "neg"], {"pos": 1}, random.Random(0))
    with pytest.raises(DataError, match="b:1.*no meta"):
        balanced_indices(["pos", None], "uniform", random.Random(0), sources=["b:0", "b:1"])
    with pytest.raises(Exception, match="balanc"):
        from honed.config import config_from_dict
        config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": "a", "sampling": {"balanc": {}}}})


def test_epoch_data_balances_by_label_per_epoch():
    d = shaped({"balance": {"by": "label", "weights": {"positive": 1, "negative": 1}}})
    for epoch in (0, 1):
        order = d.order(epoch)
        assert Counter(d.metas[i]["label"] for i in order) == {"positive": 12, "negative": 12}
    assert d.order(0) != d.order(1)


def test_curriculum_orders_easy_to_hard_by_stage():
    difficulty = [float(x) for x in random.Random(0).sample(range(100), 30)]
    order = curriculum_order(list(range(30)), difficulty, buckets=3, rng=random.Random(1))
    stages = [order[:10], order[10:20], order[20:]]
    for easy, hard in zip(stages, stages[1:]):
        assert max(difficulty[i] for i in easy) <= min(difficulty[i] for i in hard)
    d = shaped({"curriculum": {"measure": "length", "buckets": 4, "epochs": 1}})
    lengths = [len(s.input_ids) for s in d.samples(0)]
    o = d.order(0)
    quarters = [o[k * 6:(k + 1) * 6] for k in range(4)]
    assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(quarters, quarters[1:]))
    assert sorted(d.order(1)) == list(range(24))  # after `epochs`, a normal shuffle


def test_hard_mining_gives_the_highest_loss_samples_more_places():
    losses = {i: float(i) for i in range(10)}  # origin 9 is the hardest
    out = hard_replays(list(range(10)), list(range(10)), losses, top_fraction=0.2, factor=3, keep_size=True)
    c = Counter(out)
    assert c[9] == 3 and c[8] == 3 and len(out) == 10 and 0 not in c and 1 not in c
    d = shaped({"hard_mining": {"top_fraction": 0.25, "factor": 2}})
    assert Counter(d.order(0)) == Counter(range(24))  # nothing learned yet
    # loss = the record's number (t.jsonl:N), so the 6 hardest (a quarter of 24) are records 18..23.
    d.end_epoch(0, lambda samples: [float(s.source.rsplit(":", 1)[1]) for s in samples])
    order1 = Counter(d.order(1))
    assert {i for i, n in order1.items() if n == 2} == set(range(18, 24)) and len(d.order(1)) == 24
    # keep_size: as many of the easiest records sit the epoch out as replays were added.
    assert {i for i in range(24) if i not in order1} == set(range(6))


def test_on_the_fly_draws_differ_per_epoch_and_repeat_for_the_same_seed():
    a, b = shaped(recipe=RECIPE), shaped(recipe=RECIPE)
    texts = lambda d, e: [s.input_ids for s in d.samples(e)]  # noqa: E731
    assert texts(a, 0) == texts(b, 0) and texts(a, 1) == texts(b, 1)
    assert texts(a, 0) != texts(a, 1)
    m = shaped(recipe=RECIPE, mode="materialize")
    assert texts(m, 0) == texts(m, 3) == texts(a, 0)
    other = shaped(recipe={**RECIPE, "seed": 6})
    assert texts(other, 0) != texts(a, 0)
    # Labels survive augmentation: every variant's answer names its record's label (or a synonym of it).
    syn = {"positive": {"positive", "favourable", "good"}, "negative": {"negative", "unfavourable", "bad"}}
    _, metas, origins = a._draw(1)
    for s, meta, o in zip(a.samples(1), metas, origins):
        answer = "".join(map(chr, s.input_ids)).rsplit("|", 1)[1]
        assert any(w in answer for w in syn[convs()[o].meta["label"]]) and meta["label"] == convs()[o].meta["label"]


def test_state_dict_is_json_and_restores_the_same_plan():
    sampling = {"hard_mining": {"top_fraction": 0.2}, "curriculum": {"measure": "length"}, "balance": {"weights": "uniform"}}
    d = shaped(sampling, recipe=RECIPE)
    d.end_epoch(0, lambda samples: [float(sum(s.input_ids) % 7) for s in samples])
    state = json.loads(json.dumps(d.state_dict()))
    e = shaped(sampling, recipe=RECIPE)
    assert d.mined["epoch"] == 0 and len(d.mined["loss"]) == 24
    assert e.order(1) != d.order(1)  # e has learned nothing yet
    e.load_state_dict(state)
    assert e.order(1) == d.order(1) and e.order(2) == d.order(2)


def test_plain_config_gets_plain_epoch_data():
    from honed.config import config_from_dict
    from honed.data.epochs import make_epoch_data

    cfg = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": "a.jsonl"}})
    assert type(make_epoch_data(cfg, [], ["x"], None, None)) is EpochData


def test_loss_curriculum_scores_with_the_model_it_is_given():
    from honed.config import config_from_dict
    from honed.data.epochs import make_epoch_data

    cfg = config_from_dict({"model": {"name_or_path": "base"}, "data": {"train": "a.jsonl", "sampling": {
        "curriculum": {"measure": "loss", "buckets": 3, "scorer_model": "scorer"}}}})
    samples = [SimpleNamespace(input_ids=[1] * n, source=f"t.jsonl:{i}") for i, n in enumerate((5, 6, 7))]
    calls = []

    def score_with_model(model_cfg, scored, device="auto"):
        calls.append((model_cfg.name_or_path, len(scored), device))
        return [3.0, 1.0, 2.0]  # sample 1 is the easiest, then 2, then 0

    data = make_epoch_data(cfg, [], samples, None, None, score_with_model=score_with_model)
    assert data.order(0) == [1, 2, 0]
    assert calls == [("scorer", 3, "auto")]  # data.sampling.curriculum.scorer_model, scored once
    with pytest.raises(ConfigError, match="measure=loss scores each sample with a model.*score_with_model"):
        make_epoch_data(cfg, [], samples, None, None)
