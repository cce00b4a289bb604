"""Which weights each evaluated model is: a base/full model, base + adapter, a run's checkpoint.

>>> specs = resolve_models(cfg.models)   # doctest: +SKIP
>>> [(s.name, s.model_path, s.adapter) for s in specs]   # doctest: +SKIP
[('lora', '/models/tiny', 'runs/lora'), ('base', '/models/tiny', None)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honed.errors import ConfigError, ModelError
from honed.eval.config import ModelEntry, model_names
from honed.model.reference import ModelRef, is_adapter_dir, resolve_model_reference
from honed.model.runs import CHECKPOINTS, checkpoint_step, list_checkpoints

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CONFIG_KEYS = ("`path`", "`adapter`")  # what resolution errors call a models[] entry's two keys


@dataclass(init=False)
class ModelSpec:
    """An evaluated model: its report `name`, what to load (`ref`, resolved the same way as for
    `honed chat`/`export`/`serve`) and `step` for a checkpoint of a `honed train` run.

    `model_path`, `adapter`, `run_dir`, `weights_dir` and `describe()` are the reference's.
    `ModelSpec(name, model_path, adapter, run_dir, step)` builds one from already split paths."""

    name: str
    ref: ModelRef
    step: int | None

    def __init__(self, name: str, model: ModelRef | str, adapter: str | None = None, run_dir: str | None = None,
                 step: int | None = None):
        self.name, self.step = name, step
        self.ref = model if isinstance(model, ModelRef) else ModelRef.of(model, adapter, run_dir)

    @property
    def model_path(self) -> str:
        return self.ref.base

    @property
    def adapter(self) -> str | None:
        return self.ref.adapter

    @property
    def run_dir(self) -> str | None:
        return self.ref.run_dir

    @property
    def weights_dir(self) -> str:
        return self.ref.weights_dir

    def describe(self) -> str:
        return self.ref.describe()


def size_on_disk(path: str | Path) -> int | None:
    """Bytes of the weight files in a folder (an adapter's are what ships); None for a hub id.

    >>> size_on_disk("/no/such/folder") is None
    True
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


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
            specs.append(ModelSpec(name, first.ref.untuned()))
            continue
        try:
            specs.append(ModelSpec(name, resolve_model_reference(entry.path, entry.adapter, keys=_CONFIG_KEYS)))
        except ModelError as err:
            raise ConfigError(f"{who}: {err}") from None
    return specs


def checkpoint_specs(spec: ModelSpec) -> list[ModelSpec]:
    """One spec per `checkpoints/checkpoint-N` of the run `spec` came from, oldest first.

    Checkpoints of LoRA runs hold adapter files, so each loads like the final adapter.
    """
    if spec.run_dir is None:
        raise ConfigError(f"fitting.checkpoints=all: {spec.name} ({spec.weights_dir}) is not a `honed train` "
                          "output folder (no run_info.json or metrics.jsonl); point the first model at a run folder")
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
        specs.append(ModelSpec(f"{spec.name}@{step}", spec.ref.with_adapter(str(folder)), step=step))
    return specs
