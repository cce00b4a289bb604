"""Which weights each evaluated model is: a base/full model, base + adapter, a run's checkpoint.

>>> specs = resolve_models(cfg.models)   # doctest: +SKIP
>>> [(s.name, s.model_path, s.adapter) for s in specs]   # doctest: +SKIP
[('lora', '/models/tiny', 'runs/lora'), ('base', '/models/tiny', None)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honed.errors import ConfigError
from honed.eval.config import ModelEntry, model_names
from honed.model.reference import adapter_base_path, is_adapter_dir, is_run_dir, resolve_model_reference
from honed.model.runs import CHECKPOINTS, checkpoint_step, list_checkpoints

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class ModelSpec:
    """What to load (`model_path` + optional `adapter`) and what to call it in the report.

    `run_dir` is set when the model came from a `honed train` output folder (it has
    metrics.jsonl); `step` for a checkpoint of such a run."""

    name: str
    model_path: str
    adapter: str | None = None
    run_dir: str | None = None
    step: int | None = None

    @property
    def weights_dir(self) -> str:
        return self.adapter or self.model_path

    def describe(self) -> str:
        return f"{self.model_path} + adapter {self.adapter}" if self.adapter else self.model_path


def run_folder_of(path: str | Path) -> str | None:
    """The `honed train` output folder this path is (or is a checkpoint of), if any."""
    folder = Path(path)
    for candidate in (folder, folder.parent.parent, folder.parent):
        if (candidate / "metrics.jsonl").is_file():
            return str(candidate)
    return None


def size_on_disk(path: str | Path) -> int | None:
    """Bytes of the weight files in a folder (an adapter's are what ships); None for a hub id.

    >>> size_on_disk("/no/such/folder") is None
    True
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _base_of(adapter: str, who: str) -> str:
    base = adapter_base_path(adapter)
    if not base:
        raise ConfigError(f"{who}: {adapter}/adapter_config.json names no base model "
                          "(base_model_name_or_path); give the base model as `path` and the adapter as `adapter`")
    return base


def resolve_models(entries: list[ModelEntry]) -> list[ModelSpec]:
    """Turn config entries into specs. `path: base` is the base model of the first model's
    adapter — the untuned model, the natural baseline."""
    names = model_names(entries)
    specs: list[ModelSpec] = []
    for i, (entry, name) in enumerate(zip(entries, names)):
        who = f"models[{i}] ({name})"
        if entry.path == "base":
            first = specs[0] if specs else None
            if first is None or first.adapter is None:
                raise ConfigError(f"{who}: `base` means the base model of the first model's adapter, but the first "
                                  "model is not an adapter; give the base model's folder or hub id instead")
            specs.append(ModelSpec(name, first.model_path))
            continue
        if entry.adapter:
            specs.append(ModelSpec(name, entry.path, entry.adapter, run_folder_of(entry.adapter)))
        elif is_run_dir(Path(entry.path)):  # a `honed train` run: its best, else final, else latest weights
            ref = resolve_model_reference(entry.path)
            specs.append(ModelSpec(name, ref.base, ref.adapter, run_folder_of(ref.weights_dir)))
        elif is_adapter_dir(entry.path):
            specs.append(ModelSpec(name, _base_of(entry.path, who), entry.path, run_folder_of(entry.path)))
        else:
            folder = Path(entry.path)
            if folder.is_dir() and not (folder / "config.json").is_file():
                raise ConfigError(f"{who}: {folder} holds neither a model (config.json) nor an adapter "
                                  "(adapter_config.json); point `path` at a model, adapter or `honed train` output folder")
            specs.append(ModelSpec(name, entry.path, None, run_folder_of(entry.path) if folder.is_dir() else None))
    return specs


def checkpoint_specs(spec: ModelSpec) -> list[ModelSpec]:
    """One spec per `checkpoints/checkpoint-N` of the run `spec` came from, oldest first.

    Checkpoints of LoRA runs hold adapter files, so each loads like the final adapter.
    """
    if spec.run_dir is None:
        raise ConfigError(f"fitting.checkpoints=all: {spec.name} ({spec.weights_dir}) is not a `honed train` "
                          "output folder (no metrics.jsonl); point the first model at a run folder")
    root = Path(spec.run_dir) / CHECKPOINTS
    found = [(checkpoint_step(p), p) for p in list_checkpoints(spec.run_dir)]
    if not found:
        raise ConfigError(f"fitting.checkpoints=all: {root} has no checkpoint-N folders "
                          "(training.save_total_limit keeps only the last few; raise it to keep more)")
    specs = []
    for step, folder in found:
        if not is_adapter_dir(folder):
            raise ConfigError(f"fitting.checkpoints=all: {folder} has no adapter files; only LoRA/QLoRA "
                              "checkpoints can be evaluated (full fine-tuning keeps only training state there)")
        specs.append(ModelSpec(f"{spec.name}@{step}", spec.model_path, str(folder), spec.run_dir, step))
    return specs
