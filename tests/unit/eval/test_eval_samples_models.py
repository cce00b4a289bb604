"""Loading evaluation records and resolving which weights each model is."""

from __future__ import annotations

import json

import pytest

from honed.errors import ConfigError, DataError
from honed.eval.config import EvalData, ModelEntry
from honed.eval.models import checkpoint_specs, resolve_models, size_on_disk
from honed.eval.samples import load_samples


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_record_shape_becomes_a_sample_and_problems_stay_per_sample(tmp_path):
    path = _write(tmp_path / "e.jsonl", [
        {"prompt": "What is TSH?", "reference": "A hormone.", "kind": "in_domain"},
        {"instruction": "Translate", "input": "你好", "output": "hello", "kind": "ood"},
        {"messages": [{"role": "user", "content": "Who won?"}, {"role": "assistant", "content": "I can't answer."}], "kind": "near"},
        {"prompt": "No reference here", "kind": "sideways"},
    ])
    samples = load_samples(EvalData(path=str(path), system_prompt="Scope."))
    assert [s.split for s in samples] == ["in_domain", "out_of_domain", "near_domain", None]
    assert samples[1].prompt_text == "Translate\n\n你好" and samples[1].reference == "hello"
    assert samples[2].reference == "I can't answer."
    assert all(s.conversation.messages[0].content == "Scope." for s in samples)
    assert samples[3].problems[0].startswith("split 'sideways' is not one of")
    assert "missing reference" in samples[3].problems
    assert samples[0].with_reference().messages[-1].content == "A hormone."
    assert samples[3].with_reference() is None


def test_a_record_without_a_prompt_names_its_line(tmp_path):
    path = _write(tmp_path / "e.jsonl", [{"prompt": "ok"}, {"question": "?"}])
    with pytest.raises(DataError, match=r"e.jsonl:2: expected a 'prompt'"):
        load_samples(EvalData(path=str(path)))


def _adapter(folder, base):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    return folder


def test_base_means_the_adapters_base_and_run_folders_are_found(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    run = _adapter(tmp_path / "run", base)
    (run / "metrics.jsonl").write_text("")
    for step in (20, 5):
        ckpt = _adapter(run / "checkpoints" / f"checkpoint-{step:06d}", base)
        (ckpt / "trainer_state.json").write_text("{}")  # what marks a checkpoint complete
    specs = resolve_models([ModelEntry(path=str(run)), ModelEntry(path="base")])
    assert [(s.name, s.model_path, s.adapter) for s in specs] == [("run", str(base), str(run)), ("base", str(base), None)]
    assert specs[0].run_dir == str(run) and specs[1].run_dir is None
    assert [(s.name, s.step) for s in checkpoint_specs(specs[0])] == [("run@5", 5), ("run@20", 20)]
    assert size_on_disk(run) == 1000
    with pytest.raises(ConfigError, match="is not a `honed train` output folder"):
        checkpoint_specs(specs[1])


def test_base_without_an_adapter_and_empty_folders_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="first model is not an adapter"):
        resolve_models([ModelEntry(path="some/hub-id"), ModelEntry(path="base")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a model"):
        resolve_models([ModelEntry(path=str(tmp_path / "empty"))])
