"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

A checkpoint folder is written to a temporary name and renamed into place, so an interrupted
save never leaves a half checkpoint that `resume` would pick up.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from honed.errors import ConfigError
from honed.model.runs import CHECKPOINTS, checkpoint_step, list_checkpoints
from honed.utils.fs import atomic_dir

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where the run is: what resuming needs beyond tensors."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    total_steps: int = 0
    tokens_seen: int = 0
    data_state: dict = field(default_factory=dict)  # EpochData.state_dict(): what a data strategy learned
    data_fingerprint: str = ""  # resuming on other data is refused
    micro_batches_per_step: int = 0  # global (all processes); a resume on another world size keeps it (0: not recorded)
    fp8_bases: str | None = None  # precision fp8: "fp8" or "bf16", the LoRA bases the run chose (engine.fp8_choice); a resume keeps them


def rng_state() -> dict:
    """Every RNG a step may draw from, in a form `torch.load(weights_only=True)` accepts."""
    version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(py_state),
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": (int(np_has_gauss), float(np_gauss)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters training changes, by name, on the CPU."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` is (or will be) written."""
    return Path(out_dir) / CHECKPOINTS / f"checkpoint-{step:06d}"


def _saved_state(path: Path | None, key: str):
    """One field of the trainer_state.json of checkpoint `path` (None: no checkpoint, an unreadable
    file, which load_checkpoint names, or a field from before it was recorded)."""
    if path is None:
        return None
    try:
        return json.loads((Path(path) / "trainer_state.json").read_text()).get(key)
    except (OSError, ValueError):
        return None


def saved_micro_per_step(path: Path | None) -> int | None:
    """Global micro-batches per optimizer step the checkpoint at `path` trained with (None: no
    checkpoint, or one from before this was recorded)."""
    return _saved_state(path, "micro_batches_per_step") or None


def saved_fp8_bases(path: Path | None) -> str | None:
    """The LoRA bases ("fp8" or "bf16") a precision-fp8 run at checkpoint `path` trained with, or None."""
    found = _saved_state(path, "fp8_bases")
    return found if found in ("fp8", "bf16") else None


def save_checkpoint(out_dir: Path, model, optimizer, scheduler, state: TrainState, *, scaler=None, save_model_files=None, keep: int | None = None) -> Path:
    """Write checkpoint-<step> under out_dir/checkpoints and prune the oldest beyond `keep`."""
    target = checkpoint_dir(out_dir, state.step)
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
        if scaler is not None:  # fp16 loss scale: restarting it would change the first resumed steps
            blob["scaler"] = scaler.state_dict()
        torch.save(blob, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if save_model_files is not None:
            save_model_files(tmp)  # peft adapter files, so any checkpoint is usable as an adapter
    if keep:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def drop_checkpoints_after(out_dir: Path, step: int) -> None:
    """Resuming from an older checkpoint abandons the later ones; they must not be pruned in its
    place nor picked up by a later `resume: true`."""
    for path in list_checkpoints(out_dir):
        if checkpoint_step(path) > step:
            log.info("removing %s: training resumed from step %d, before it", path, step)
            shutil.rmtree(path, ignore_errors=True)


def find_resume_checkpoint(resume: bool | str, out_dir: Path) -> Path | None:
    """`resume: true` → the latest checkpoint in out_dir (None when there is none yet); a path → that one."""
    if resume is False:
        return None
    if resume is True or str(resume).lower() == "true":
        found = list_checkpoints(out_dir)
        if not found:
            log.warning("training.resume: true, but %s holds no checkpoint yet: starting from scratch", Path(out_dir) / CHECKPOINTS)
        return found[-1] if found else None
    path = Path(str(resume))
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"training.resume={resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def _changed_rank(path: Path, model) -> str:
    """' (lora.r was 8, is 4)' when the checkpoint's adapter config names another rank, else ''."""
    try:
        saved = json.loads((Path(path) / "adapter_config.json").read_text()).get("r")
    except (OSError, ValueError):
        return ""
    now = getattr(getattr(model, "peft_config", {}).get("default"), "r", None)
    return f" (lora.r was {saved}, is {now})" if saved is not None and now is not None and saved != now else ""


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> TrainState:
    """Restore everything saved by save_checkpoint; RNG states last, so nothing after reseeds them."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    unknown, absent = sorted(set(weights) - set(params)), sorted(trainable - set(weights))
    if unknown or absent:
        which = f"unknown parameter {unknown[0]}" if unknown else f"no weights for {absent[0]}"
        raise ConfigError(f"{path}: checkpoint does not match this model/config ({which}); resume with the config that wrote it")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ConfigError(f"{path}: checkpoint does not match this config: {name} is {tuple(tensor.shape)} there and "
                              f"{tuple(params[name].shape)} here{_changed_rank(path, model)}; resume with the config that wrote it, "
                              "or start a new run")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    try:
        optimizer.load_state_dict(blob["optimizer"])
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{path}: optimizer state does not fit this run ({err}); was training.optimizer or the trainable set changed?") from None
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and "scaler" in blob:
        scaler.load_state_dict(blob["scaler"])
    set_rng_state(blob["rng"])
    return TrainState(**json.loads((path / "trainer_state.json").read_text()))
