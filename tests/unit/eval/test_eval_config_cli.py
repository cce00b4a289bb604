"""EvalConfig validation and how `honed eval` flags become a config."""

from __future__ import annotations

import argparse
import json

import pytest

from honed.errors import ConfigError
from honed.eval.config import eval_config_from_dict, load_eval_config


def _parse(argv):
    from honed.commands.eval import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(ConfigError) as err:
        eval_config_from_dict({"models": [{"path": "m"}], "data": {"path": "d", "sytem_prompt": "x"}, "genration": {}})
    text = str(err.value)
    assert "data.sytem_prompt: unknown key" in text and "genration: unknown key" in text
    with pytest.raises(ConfigError, match=r"data: Field required"):
        eval_config_from_dict({"models": [{"path": "m"}]})


def test_baseline_must_name_a_model_and_names_must_differ():
    with pytest.raises(ConfigError, match="baseline 'nope' is not one of"):
        eval_config_from_dict({"models": [{"path": "a"}, {"path": "b"}], "baseline": "nope", "data": {"path": "d"}})
    with pytest.raises(ConfigError, match="share a name"):
        eval_config_from_dict({"models": [{"path": "x", "name": "m"}, {"path": "y", "name": "m"}], "data": {"path": "d"}})
    cfg = eval_config_from_dict({"models": [{"path": "runs/lora"}, {"path": "base"}], "data": {"path": "d"}})
    assert cfg.baseline_name() == "base"


def test_yaml_file_paths_resolve_beside_the_file_and_overrides_apply(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "q", "reference": "a"}) + "\n")
    (tmp_path / "eval.yaml").write_text("models:\n  - path: some/model\ndata:\n  path: eval.jsonl\n")
    cfg = load_eval_config(tmp_path / "eval.yaml", ["generation.batch_size=3"])
    assert cfg.data.path == str(tmp_path / "eval.jsonl")
    assert cfg.generation.batch_size == 3 and cfg.models[0].path == "some/model"
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_eval_config(tmp_path / "bad.yaml")


def test_cli_flags_build_models_baselines_and_options():
    from honed.commands.eval import build_config

    args = _parse(["--model", "runs/lora", "--data", "e.jsonl", "--baseline", "base", "--baseline", "other/model",
                   "--labels", "yes, no", "--stability", "4", "--general", "--judge-url", "http://127.0.0.1:9/v1",
                   "--checkpoints", "all", "--output", "rep", "--refusal-phrase", "not my field", "generation.seed=7"])
    cfg = build_config(args)
    assert [m.path for m in cfg.models] == ["runs/lora", "base", "other/model"]
    assert cfg.baseline_name() == "base"
    assert cfg.labels == ["yes", "no"] and cfg.stability.samples == 4 and cfg.general.enabled
    assert cfg.judge.enabled and cfg.judge.base_url == "http://127.0.0.1:9/v1"
    assert cfg.fitting.checkpoints == "all" and cfg.output_dir == "rep" and cfg.generation.seed == 7
    assert cfg.refusal.phrases == ["not my field"]


def test_cli_flags_override_a_config_file(tmp_path):
    from honed.commands.eval import build_config

    (tmp_path / "eval.yaml").write_text("models:\n  - path: a/model\n  - path: b/model\ndata:\n  path: d.jsonl\n"
                                        "generation:\n  max_new_tokens: 32\n")
    cfg = build_config(_parse([str(tmp_path / "eval.yaml"), "--batch-size", "2", "--overwrite"]))
    assert [m.path for m in cfg.models] == ["a/model", "b/model"]
    assert cfg.baseline_name() == "b/model"  # same folder names: the parent tells them apart
    assert cfg.generation.max_new_tokens == 32 and cfg.generation.batch_size == 2 and cfg.overwrite


def test_cli_without_model_or_data_says_what_to_give():
    from honed.commands.eval import build_config

    with pytest.raises(ConfigError, match="--model DIR"):
        build_config(_parse([]))
    with pytest.raises(ConfigError, match="--data FILE is required"):
        build_config(_parse(["--model", "m"]))
