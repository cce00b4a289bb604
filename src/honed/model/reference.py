"""What a user means by "the model": a hub id, a model folder, an adapter folder or a training run.

Everywhere a model is named (`export`, `chat`, `generate`, `eval`, `serve`) a `honed train` output
folder works too, so nobody has to know its layout: the run's `best/` weights when validation
picked some, else the final weights at the run's root, else its latest checkpoint.

>>> ref = resolve_model_reference("Qwen/Qwen2.5-0.5B-Instruct")
>>> ref.kind, ref.base, ref.adapter
('hub', 'Qwen/Qwen2.5-0.5B-Instruct', None)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from honed.errors import ModelError
from honed.model.load import check_model_source
from honed.model.scope import load_scope_prompt

RUN_MARKERS = ("run_info.json", "metrics.jsonl", "checkpoints")


@dataclass(frozen=True)
class ModelRef:
    """Base weights (`base`, a folder or hub id), an optional LoRA `adapter` over them, the scope
    prompt they were trained with, what the reference named, and the run folder it came from."""

    base: str
    adapter: str | None
    scope_prompt: str | None
    kind: str  # "hub" | "model" | "adapter" | "run"
    run_dir: str | None = None

    @property
    def weights_dir(self) -> str:
        """The folder holding the trained weights (the adapter's, else the model's)."""
        return self.adapter or self.base

    def describe(self) -> str:
        """`base`, or `base + adapter ADAPTER`: how logs and reports name these weights."""
        return f"{self.base} + adapter {self.adapter}" if self.adapter else self.base

    @classmethod
    def of(cls, base: str, adapter: str | None = None, run_dir: str | None = None) -> "ModelRef":
        """A reference already split into base + adapter (nothing on disk is read but whether `base` is a folder)."""
        kind = "adapter" if adapter else "model" if Path(base).is_dir() else "hub"
        return cls(base, adapter, None, kind, run_dir)

    def untuned(self) -> "ModelRef":
        """The base model under this reference's adapter, alone: the natural baseline."""
        return ModelRef.of(self.base)

    def with_adapter(self, adapter: str) -> "ModelRef":
        """The same base, scope and run with another adapter over it (e.g. one of the run's checkpoints)."""
        return replace(self, adapter=adapter)


def is_adapter_dir(folder: str | Path) -> bool:
    """True for a peft adapter folder (it has adapter_config.json)."""
    return (Path(folder) / "adapter_config.json").is_file()


def is_model_dir(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def is_run_dir(folder: Path) -> bool:
    """A `honed train` output folder (finished, or interrupted with checkpoints)."""
    return folder.is_dir() and any((folder / m).exists() for m in RUN_MARKERS)


def run_dir_of(folder: Path) -> Path | None:
    """The run a folder belongs to: itself, or the run above its `best/` or `checkpoints/checkpoint-N`.

    A run is marked by run_info.json (written when it finishes) or metrics.jsonl (written as it trains)."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / "run_info.json").is_file() or (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def pick_run_weights(run: Path) -> Path:
    """best/ if present, else the final weights at the root, else the latest usable checkpoint."""
    best = run / "best"
    if is_adapter_dir(best) or is_model_dir(best):
        return best
    if is_adapter_dir(run) or is_model_dir(run):
        return run
    from honed.model.runs import list_checkpoints

    usable = [c for c in list_checkpoints(run) if is_adapter_dir(c)]
    if usable:
        return usable[-1]
    raise ModelError(f"{run}: a training run folder with no usable weights yet (no best/, no final adapter or "
                     "model, no checkpoint with adapter files); wait for the run to save, or resume it")


def adapter_base_path(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on (adapter_config.json's base_model_name_or_path), or
    None when the folder holds no adapter_config.json."""
    import json

    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelError(f"{config} cannot be read: {err}") from None


CLI_KEYS = ("--model", "--adapter")  # what error messages call the model and the adapter


def adapter_base(adapter: Path, keys: tuple[str, str] = CLI_KEYS) -> str:
    """`adapter_base_path`, refusing an adapter that names no base."""
    base = adapter_base_path(adapter)
    if not base:
        raise ModelError(f"{adapter}/adapter_config.json names no base model (base_model_name_or_path); "
                         f"give the base with {keys[0]} and the adapter with {keys[1]}")
    return base


def run_scope_prompt(run: Path | None) -> str | None:
    """The scope prompt a run trained with, from its resolved config.yaml (data.system_prompt)."""
    if run is None or not (run / "config.yaml").is_file():
        return None
    import yaml

    try:
        data = (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
    except yaml.YAMLError:
        return None
    return data.get("system_prompt") or None


def resolve_model_reference(ref: str | None, adapter: str | None = None, *, keys: tuple[str, str] = CLI_KEYS) -> ModelRef:
    """Turn what the user named (and an optional explicit `adapter`) into base + adapter + scope.

    `keys` are what error messages call the two (CLI flags; a config file passes its keys).

    >>> resolve_model_reference("/no/such/folder")
    Traceback (most recent call last):
    ...
    honed.errors.ModelError: model folder not found: /no/such/folder (a local folder, or a hub id like org/name where a network exists)
    """
    if adapter is not None:
        folder = Path(adapter)
        if is_run_dir(folder) and not is_adapter_dir(folder):
            folder = pick_run_weights(folder)
        if not is_adapter_dir(folder):
            raise ModelError(f"{keys[1]} {adapter}: not a LoRA adapter folder (no adapter_config.json)")
        base = resolve_model_reference(ref, keys=keys) if ref else None
        if base is not None and base.adapter:
            raise ModelError(f"{keys[0]} {ref} is itself an adapter; give the base model with {keys[0]}")
        run = run_dir_of(folder)
        return ModelRef(base.base if base else adapter_base(folder, keys), str(folder),
                        _scope(folder, run), "adapter", str(run) if run else None)
    check_model_source(ref)
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        return ModelRef(ref, None, None, "hub")
    kind = "model"
    if is_run_dir(folder) and (not (is_adapter_dir(folder) or is_model_dir(folder)) or (folder / "best").is_dir()):
        folder, kind = pick_run_weights(folder), "run"
    elif is_run_dir(folder):
        kind = "run"
    run = run_dir_of(folder)
    if is_adapter_dir(folder):
        return ModelRef(adapter_base(folder, keys), str(folder), _scope(folder, run), "adapter" if kind == "model" else kind,
                        str(run) if run else None)
    if is_model_dir(folder):
        return ModelRef(str(folder), None, _scope(folder, run), kind, str(run) if run else None)
    raise ModelError(f"{folder}: holds neither a model (config.json), an adapter (adapter_config.json) nor a "
                     "`honed train` run; point at one of those")


def _scope(folder: Path, run: Path | None) -> str | None:
    return load_scope_prompt(folder) or (load_scope_prompt(run) if run else None) or run_scope_prompt(run)
