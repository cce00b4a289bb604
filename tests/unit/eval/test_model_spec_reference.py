"""`honed eval`'s models and every other command's `--model` resolve through one ModelRef.

Each layout is resolved both ways (an eval `models:` entry and `resolve_model_reference`, which chat,
generate, serve and export use); the expected base/adapter/run/describe are written out by hand."""

from __future__ import annotations

import json

import pytest

from honed.errors import ConfigError
from honed.eval.config import ModelEntry
from honed.eval.models import checkpoint_specs, resolve_models
from honed.model.reference import resolve_model_reference


def _adapter(folder, base):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture
def layout(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    run = tmp_path / "run"  # a finished LoRA run with best/ weights and two checkpoints
    _adapter(run, base)
    _adapter(run / "best", base)
    (run / "run_info.json").write_text("{}")
    (run / "config.yaml").write_text("data:\n  system_prompt: Lab questions only.\n")
    for step in (4, 8):
        (_adapter(run / "checkpoints" / f"checkpoint-{step:06d}", base) / "trainer_state.json").write_text("{}")
    interrupted = tmp_path / "interrupted"  # no final weights yet: its latest checkpoint
    (interrupted).mkdir()
    (interrupted / "metrics.jsonl").write_text("")
    for step in (3, 6):
        (_adapter(interrupted / "checkpoints" / f"checkpoint-{step:06d}", base) / "trainer_state.json").write_text("{}")
    adapter = _adapter(tmp_path / "adapter", base)
    return base, run, interrupted, adapter


def _both(path, adapter=None):
    spec = resolve_models([ModelEntry(path=str(path), adapter=str(adapter) if adapter else None)])[0]
    ref = resolve_model_reference(str(path), str(adapter) if adapter else None)
    assert spec.ref == ref
    return spec


def test_each_layout_means_the_same_weights_in_eval_and_elsewhere(layout):
    base, run, interrupted, adapter = layout
    spec = _both(run)
    assert (spec.model_path, spec.adapter, spec.run_dir, spec.ref.kind) == (str(base), str(run / "best"), str(run), "run")
    assert spec.weights_dir == str(run / "best")
    assert spec.describe() == f"{base} + adapter {run / 'best'}"
    assert spec.ref.scope_prompt == "Lab questions only."

    latest = interrupted / "checkpoints" / "checkpoint-000006"
    spec = _both(interrupted)
    assert (spec.model_path, spec.adapter, spec.run_dir) == (str(base), str(latest), str(interrupted))

    spec = _both(adapter)
    assert (spec.model_path, spec.adapter, spec.run_dir, spec.ref.kind) == (str(base), str(adapter), None, "adapter")
    assert spec.describe() == f"{base} + adapter {adapter}"

    spec = _both(base, adapter)  # base and adapter named separately
    assert (spec.model_path, spec.adapter, spec.describe()) == (str(base), str(adapter), f"{base} + adapter {adapter}")

    spec = _both(base)
    assert (spec.model_path, spec.adapter, spec.weights_dir, spec.describe(), spec.ref.kind) == (
        str(base), None, str(base), str(base), "model")


def test_base_is_the_first_adapters_untuned_model_and_checkpoints_keep_the_run(layout):
    base, run, _, _ = layout
    tuned, untuned = resolve_models([ModelEntry(path=str(run)), ModelEntry(path="base")])
    assert untuned.ref == resolve_model_reference(str(base))  # the base folder as `--model` names it
    assert (untuned.model_path, untuned.adapter, untuned.run_dir, untuned.describe()) == (str(base), None, None, str(base))
    ckpts = checkpoint_specs(tuned)
    assert [(c.name, c.step, c.adapter, c.run_dir, c.model_path) for c in ckpts] == [
        ("run@4", 4, str(run / "checkpoints" / "checkpoint-000004"), str(run), str(base)),
        ("run@8", 8, str(run / "checkpoints" / "checkpoint-000008"), str(run), str(base))]


def test_a_config_entry_error_names_the_entry_and_its_keys(tmp_path, layout):
    base, _, _, adapter = layout
    no_base = tmp_path / "orphan"
    no_base.mkdir()
    (no_base / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"models\[0\] \(orphan\): .*give the base with `path` and the adapter with `adapter`"):
        resolve_models([ModelEntry(path=str(no_base))])
    with pytest.raises(ConfigError, match=r"models\[0\] \(.*\): `path` .* is itself an adapter"):
        resolve_models([ModelEntry(path=str(adapter), adapter=str(adapter))])
