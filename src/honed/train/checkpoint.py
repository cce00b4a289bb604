"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

A checkpoint folder is written to a temporary name and renamed into place, so an interrupted
save never leaves a half checkpoint that `resume` would pick up.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from honed.errors import ConfigError
from honed.utils.fs import atomic_dir

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


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


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    np_state = np.random.get_state()
    state["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    state["numpy_pos"] = int(np_state[2])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, model, optimizer, scheduler, state: TrainState, *, save_model_files=None, keep: int | None = None) -> Path:
    """Write checkpoint-<step> under out_dir/checkpoints and prune the oldest beyond `keep`."""
    target = Path(out_dir) / CHECKPOINTS / f"checkpoint-{state.step:06d}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if save_model_files is not None:
            save_model_files(tmp)  # peft adapter files, so any checkpoint is usable as an adapter
    if keep:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(resume: bool | str, out_dir: Path) -> Path | None:
    """`resume: true` → the latest checkpoint in out_dir (None when there is none yet); a path → that one."""
    if resume is False:
        return None
    if resume is True or str(resume).lower() == "true":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(str(resume))
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"training.resume={resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    """Restore everything saved by save_checkpoint; RNG states last, so nothing after reseeds them."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigError(f"{path}: checkpoint does not match this model/config (unknown parameter {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainState(**json.loads((path / "trainer_state.json").read_text()))
