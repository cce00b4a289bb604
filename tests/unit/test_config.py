import pytest

from honed.config import load_config, parse_overrides
from honed.errors import ConfigError


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_overrides_nest_and_type_values():
    assert parse_overrides(["training.learning_rate=1e-4", "data.packing=false", "method=full"]) == {
        "training": {"learning_rate": 1e-4},
        "data": {"packing": False},
        "method": "full",
    }


def test_override_without_equals_names_it():
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_overrides(["training.learning_rate"])


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "model: {name_or_path: m}\ndata: {train: a.jsonl}\ntraining: {learning_rat: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "training.learning_rat" in str(err.value) and "unknown key" in str(err.value)


def test_bad_value_is_named(tmp_path):
    p = write(tmp_path, "model: {name_or_path: m}\ndata: {train: a.jsonl}\nmethod: lora\n")
    with pytest.raises(ConfigError, match="method"):
        load_config(p, ["method=dpo"])


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "model:\n  name_or_path: m\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:\d+"):
        load_config(p)


def test_data_paths_resolve_relative_to_config(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    p = write(tmp_path, "model: {name_or_path: m}\ndata:\n  train: [d.jsonl, {path: d.jsonl, weight: 2}]\n")
    cfg = load_config(p)
    assert cfg.data.train[0].path == str(tmp_path / "d.jsonl")
    assert cfg.data.train[1].weight == 2


def test_override_changes_value(tmp_path):
    p = write(tmp_path, "model: {name_or_path: m}\ndata: {train: a.jsonl}\n")
    cfg = load_config(p, ["training.epochs=2", "lora.r=8", "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.training.epochs == 2 and cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_shipped_configs_parse():
    from pathlib import Path

    from honed.eval.config import load_eval_config

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 5, "configs/ should ship recipes"
    for path in configs:
        (load_eval_config if path.stem.startswith("eval") else load_config)(path)
