"""Data strategies inside real training runs: on-the-fly augmentation, exact resume with every
strategy on, hard-mining state in checkpoints, and stages that start from the previous weights."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from honed.config import config_from_dict
from honed.quickstart import resource_path
from honed.train.sft import train

RECIPE = {"seed": 11, "labels": {"positive": ["positive", "favourable"], "negative": ["negative", "unfavourable"],
                                 "neutral": ["neutral", "mixed"]},
          "steps": [{"name": "label_synonym", "probability": 0.7}, {"name": "label_expression", "probability": 0.7, "params": {"ask": True}}]}
SAMPLING = {"balance": {"by": "label", "weights": {"positive": 1, "negative": 1, "neutral": 1}},
            "hard_mining": {"top_fraction": 0.25, "factor": 2}, "curriculum": {"measure": "length", "buckets": 2, "epochs": 1}}


@pytest.fixture
def labelled_file(tmp_path):
    rows = [json.loads(line) for line in (resource_path("sentiment") / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    en = [r for r in rows if r["lang"] == "en"]
    rows = [r for lab in ("positive", "negative", "neutral") for r in [x for x in en if x["label"] == lab][:4]]
    path = tmp_path / "sent.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make(tiny_model_dir, out, data_file, **extra):
    raw = {"model": {"name_or_path": str(tiny_model_dir("qwen2"))},
           "data": {"train": [str(data_file)], "max_seq_length": 128, "packing": False, **extra.pop("data", {})},
           "lora": {"r": 8, "alpha": 16, **extra.pop("lora", {})},
           "training": {"output_dir": str(out), "epochs": 3, "batch_size": 2, "learning_rate": 5e-3, "seed": 3,
                        "tensorboard": False, "save_steps": 2, **extra.pop("training", {})}}
    raw.update(extra)
    return config_from_dict(raw)


def test_on_the_fly_augmentation_retokenizes_new_draws_each_epoch(tiny_model_dir, labelled_file, tmp_path):
    from transformers import AutoTokenizer

    from honed.data.dataset import build_datasets
    from honed.data.epochs import ShapedEpochData, make_epoch_data
    from honed.data.templates import get_template

    cfg = make(tiny_model_dir, tmp_path / "x", labelled_file, data={"augment": RECIPE})
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2"))
    template = get_template("auto", tok, "qwen2")
    train_set, _, _, convs = build_datasets(cfg.data, tok, template, seed=3)
    a = make_epoch_data(cfg, convs, train_set, tok, template)
    b = make_epoch_data(cfg, convs, train_set, tok, template)
    assert isinstance(a, ShapedEpochData)
    ids = lambda d, e: [s.input_ids for s in d.samples(e)]  # noqa: E731
    assert ids(a, 0) == ids(b, 0) and ids(a, 2) == ids(b, 2)
    assert ids(a, 0) != ids(a, 1) and ids(a, 0) != [s.input_ids for s in train_set]
    decoded = tok.decode(a.samples(1)[0].input_ids)
    assert "Classify the sentiment" in decoded


def test_resumed_run_with_every_strategy_matches_an_uninterrupted_one(tiny_model_dir, labelled_file, tmp_path):
    extra = dict(data={"augment": RECIPE, "sampling": SAMPLING}, lora={"dropout": 0.1})
    whole = train(make(tiny_model_dir, tmp_path / "a", labelled_file, **extra), show_progress=False)
    assert len(whole.losses) == 18  # 12 balanced samples / batch 2 × 3 epochs
    cfg = make(tiny_model_dir, tmp_path / "b", labelled_file, **extra)
    first = train(cfg, stop_after_steps=8, show_progress=False)  # inside epoch 1: mining state exists
    state = json.loads((first.last_checkpoint / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and len(state["data_state"]["mined"]["loss"]) == 12
    cfg.training.resume = True
    resumed = train(cfg, show_progress=False)
    assert resumed.losses == pytest.approx(whole.losses[8:], rel=1e-6, abs=1e-7)


def test_stages_start_from_the_previous_stage_weights(tiny_model_dir, labelled_file, tmp_path):
    from honed.train.stages import run_stages

    cfg = make(tiny_model_dir, tmp_path / "staged", labelled_file, training={"max_steps": 3},
               stages=[{"name": "first", "training": {"learning_rate": 1e-2}},
                       {"name": "second", "training": {"learning_rate": 1e-12, "max_steps": 1}}])
    results = run_stages(cfg, show_progress=False)
    one = load_file(str(tmp_path / "staged" / "stage-1-first" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "staged" / "stage-2-second" / "adapter_model.safetensors"))
    assert set(one) == set(two)
    lora_b = [k for k in one if "lora_B" in k]
    # A fresh adapter starts with lora_B = 0; stage 2 (lr ≈ 0) still holds stage 1's trained values.
    assert all(one[k].abs().sum() > 0 for k in lora_b)
    assert all((one[k] - two[k]).abs().max() < 1e-6 for k in one)
    assert results[1].losses[0] < results[0].losses[0]
    summary = json.loads((tmp_path / "staged" / "stages.json").read_text())
    assert [s["finished"] for s in summary] == [True, True]
    again = run_stages(cfg, show_progress=False)  # finished stages are not trained again
    assert again == [None, None]
