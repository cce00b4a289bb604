"""The model-reference resolver on hand-made folder layouts (no weights are loaded)."""

from __future__ import annotations

import json

import pytest

from honed.errors import ModelError
from honed.model.reference import resolve_model_reference


def _adapter(folder, base="/models/base"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def _run(tmp_path, *, final=True, best=False, checkpoints=(), scope="You answer lab questions."):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"method: lora\ndata:\n  system_prompt: {scope}\n")
    (run / "run_info.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    if final:
        _adapter(run)
    if best:
        _adapter(run / "best")
    for step in checkpoints:
        ckpt = _adapter(run / "checkpoints" / f"checkpoint-{step:06d}")
        (ckpt / "trainer_state.json").write_text("{}")
    return run


def test_run_folder_prefers_best_then_final(tmp_path):
    run = _run(tmp_path, best=True, checkpoints=(5, 10))
    ref = resolve_model_reference(str(run))
    assert (ref.kind, ref.adapter, ref.base, ref.run_dir) == ("run", str(run / "best"), "/models/base", str(run))
    assert ref.scope_prompt == "You answer lab questions."
    (run / "best" / "adapter_config.json").unlink()
    assert resolve_model_reference(str(run)).adapter == str(run)


def test_interrupted_run_uses_latest_checkpoint(tmp_path):
    run = _run(tmp_path, final=False, checkpoints=(5, 10))
    ref = resolve_model_reference(str(run))
    assert ref.adapter == str(run / "checkpoints" / "checkpoint-000010")
    assert ref.run_dir == str(run) and ref.kind == "run"


def test_run_without_weights_is_a_clear_error(tmp_path):
    run = _run(tmp_path, final=False)
    with pytest.raises(ModelError, match="no usable weights yet"):
        resolve_model_reference(str(run))


def test_adapter_folder_names_its_base_and_saved_scope_prompt_wins(tmp_path):
    adapter = _adapter(tmp_path / "a", base="org/base-model")
    (adapter / "scope_prompt.txt").write_text("Only chemistry.")
    ref = resolve_model_reference(str(adapter))
    assert (ref.kind, ref.base, ref.adapter, ref.scope_prompt, ref.run_dir) == (
        "adapter", "org/base-model", str(adapter), "Only chemistry.", None)


def test_explicit_adapter_over_a_model_and_plain_model_and_hub(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = _adapter(tmp_path / "a")
    ref = resolve_model_reference(str(model), str(adapter))
    assert (ref.base, ref.adapter, ref.kind) == (str(model), str(adapter), "adapter")
    assert resolve_model_reference(str(model)).kind == "model"
    assert resolve_model_reference("org/name").kind == "hub"


def test_folder_with_nothing_usable(tmp_path):
    with pytest.raises(ModelError, match="neither a model"):
        resolve_model_reference(str(tmp_path))
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        resolve_model_reference("org/name", str(tmp_path))
