"""Hyper-parameters from the data size: the rule table, `auto` keys, and the warnings."""

from __future__ import annotations

import json
import logging

import pytest

from honed.config import config_from_dict
from honed.errors import ConfigError
from honed.train.defaults import apply_auto_hyperparameters, departures, resolve_data_defaults, suggest_hyperparameters


@pytest.mark.parametrize("n, tokens, method, expected", [
    (50, 200, "lora", (1e-4, 5, 8, 0.15, 3)),
    (300, 200, "qlora", (2e-4, 3, 16, 0.10, 3)),
    (5_000, 200, "lora", (2e-4, 2, 32, 0.05, None)),
    (50_000, 200, "lora", (1e-4, 1, 64, 0.02, None)),
    (300, 200, "full", (2e-5, 3, 16, 0.10, 3)),
    (5_000, 2_000, "lora", (2e-4, 1, 32, 0.05, None)),   # long samples: one epoch fewer
    (50_000, 30, "lora", (1e-4, 1, 16, 0.02, None)),     # short samples: rank capped at 16
])
def test_rule_table(n, tokens, method, expected):
    s = suggest_hyperparameters(n, tokens, method)
    assert (s.learning_rate, s.epochs, s.lora_r, s.val_ratio, s.early_stopping_patience) == expected
    assert s.reasons and str(n) in s.reasons[0]


def _cfg(**sections):
    raw = {"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def test_auto_keys_are_filled_and_early_stopping_turned_on():
    cfg = _cfg(training={"learning_rate": "auto", "epochs": "auto"}, lora={"r": "auto"}, data={"val_ratio": "auto"})
    out = apply_auto_hyperparameters(cfg, 120, 150)
    assert (out.training.learning_rate, out.training.epochs, out.lora.r, out.data.val_ratio) == (1e-4, 5, 8, 0.15)
    assert out.training.early_stopping_patience == 3
    assert cfg.training.learning_rate == "auto"  # the caller's config is left as it was


def test_auto_val_ratio_is_zero_when_validation_files_are_given():
    cfg = _cfg(data={"validation": ["v.jsonl"], "val_ratio": "auto"})
    out = apply_auto_hyperparameters(cfg, 120, 150)
    assert out.data.val_ratio == 0.0 and out.training.early_stopping_patience == 3


def test_config_without_auto_is_returned_unchanged():
    cfg = _cfg()
    assert apply_auto_hyperparameters(cfg, 10, 10) is cfg


def test_departures_name_the_keys_far_from_the_suggestion():
    s = suggest_hyperparameters(100, 100, "lora")  # 1e-4, 5 epochs, r 8, val 0.15
    cfg = _cfg(training={"learning_rate": 5e-3, "epochs": 20}, lora={"r": 64})
    found = departures(cfg, s)
    assert [f.split("=")[0] for f in found] == ["training.learning_rate", "training.epochs", "lora.r", "no validation set (suggested data.val_ratio"]
    assert departures(_cfg(training={"learning_rate": 2e-4, "epochs": 4}, lora={"r": 16}, data={"val_ratio": 0.1}), s) == []


def test_auto_is_the_only_word_accepted():
    with pytest.raises(ConfigError, match=r"training.learning_rate: Value error, must be > 0, or auto"):
        _cfg(training={"learning_rate": -1})
    with pytest.raises(ConfigError, match=r"data.val_ratio: Value error, must be >= 0 and < 1"):
        _cfg(data={"val_ratio": 1.5})


def test_resolve_measures_the_data_with_the_tokenizer(tmp_path, tiny_model_dir, caplog):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer " * 5}]}
            for i in range(30)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_model_dir("qwen2"))}, "data": {"train": [str(data)], "val_ratio": "auto"},
                            "training": {"learning_rate": 1e-2}})
    with caplog.at_level(logging.INFO, logger="honed.train.defaults"):
        out = resolve_data_defaults(cfg)
    assert out.data.val_ratio == 0.15 and out.training.learning_rate == 1e-2
    assert "suggested for 30 samples" in caplog.text
    assert "training.learning_rate=0.01 (suggested 0.0001)" in caplog.text


def test_unreadable_data_leaves_the_error_to_the_pipeline_unless_auto_needs_it(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    plain = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": [missing]}})
    assert resolve_data_defaults(plain) is plain
    auto = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": [missing]}, "training": {"epochs": "auto"}})
    with pytest.raises(ConfigError, match=r"training.epochs: auto needs the training data measured.*missing.jsonl"):
        resolve_data_defaults(auto)
