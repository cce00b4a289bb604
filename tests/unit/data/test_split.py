"""Splits are a seeded, disjoint partition, stratified by label."""

from __future__ import annotations

from collections import Counter

import pytest

from honed.data import Conversation, Message
from honed.data.split import parse_ratios, split_conversations
from honed.errors import ConfigError


def data(n_pos=60, n_neg=30, n_neu=10):
    labels = ["positive"] * n_pos + ["negative"] * n_neg + ["neutral"] * n_neu
    return [Conversation([Message("user", f"sentence {i}"), Message("assistant", lab)], source=f"s.jsonl:{i}", meta={"label": lab})
            for i, lab in enumerate(labels)]


def test_split_is_a_disjoint_partition_with_the_ratios_per_label():
    convs = data()
    parts = split_conversations(convs, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    sources = [c.source for p in parts.values() for c in p]
    assert sorted(sources) == sorted(c.source for c in convs) and len(set(sources)) == len(sources)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = Counter(c.meta["label"] for c in parts[name])
        assert counts == {"positive": 60 * share, "negative": 30 * share, "neutral": 10 * share}, name


def test_same_seed_same_split_other_seed_other_split():
    a = split_conversations(data(), seed=1)
    b = split_conversations(data(), seed=1)
    c = split_conversations(data(), seed=2)
    ids = lambda p: {k: [x.source for x in v] for k, v in p.items()}  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_unlabelled_data_is_split_without_strata_and_missing_labels_are_named():
    convs = [Conversation([Message("user", str(i)), Message("assistant", "x")], source=f"u:{i}") for i in range(20)]
    parts = split_conversations(convs, {"train": 0.5, "test": 0.5}, seed=0)
    assert [len(p) for p in parts.values()] == [10, 10]
    with pytest.raises(ConfigError, match="u:0.*label"):
        split_conversations(convs, {"train": 0.5, "test": 0.5}, stratify_by="label")


def test_ratios_parse_and_bad_ratios_are_errors():
    assert parse_ratios("80,20", "train,eval") == {"train": 0.8, "eval": 0.2}
    with pytest.raises(ConfigError, match="names"):
        parse_ratios("0.5,0.5", "train")
    with pytest.raises(ConfigError, match="> 0"):
        parse_ratios("1,0")


@pytest.mark.parametrize("ratios, total", [("0.8,0.3", "1.1"), ("0.7,0.1,0.1", "0.9")])
def test_fractions_that_do_not_sum_to_one_are_refused_not_renormalised(ratios, total):
    with pytest.raises(ConfigError, match=rf"--ratios '{ratios}': the fractions sum to {total}, not 1"):
        parse_ratios(ratios)
    assert parse_ratios("8,3") == {"train": round(8 / 11, 10), "val": round(3 / 11, 10)}  # parts are unambiguous


def test_cli_split_writes_one_file_per_split(tmp_path):
    from honed.cli import main
    from honed.data.augment.io import read_conversations, write_conversations

    src = tmp_path / "all.jsonl"
    write_conversations(src, data())
    assert main(["data", "split", str(src), "--out-dir", str(tmp_path / "parts"), "--seed", "5"]) == 0
    got = {n: read_conversations([tmp_path / "parts" / f"{n}.jsonl"]) for n in ("train", "val", "test")}
    assert [len(v) for v in got.values()] == [80, 10, 10]
    assert Counter(c.meta["label"] for c in got["val"]) == {"positive": 6, "negative": 3, "neutral": 1}
    assert main(["data", "split", str(src), "--out-dir", str(tmp_path / "parts")]) == 2  # no silent overwrite
