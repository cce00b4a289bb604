"""Sharded checkpoints through PyTorch Distributed Checkpoint (DCP), resumable on any number of ranks.

Every rank writes its own shards of the trainable weights and of the optimizer state (FSDP2's
DTensors, or whole tensors under DDP / one process) into one folder; DCP's metadata records where
each piece of each global tensor lives, so a checkpoint written by N ranks loads on M ranks, one
process without a process group included. `get_state_dict` / `set_state_dict` name the optimizer
state by parameter name, not by position, which is what lets it move between shardings.

The folder of a checkpoint:

    .metadata           DCP's index of the shards (written last by DCP; its absence = unfinished)
    __R_0.distcp        rank R's shards
    extra.pt            rank 0's `extra` (step, data position, scheduler, ...) and every rank's RNG

It is written under a temporary name beside its final one and renamed by rank 0 once every rank has
finished, so a crash mid-save never leaves a folder that looks like a checkpoint. For runs on
several hosts the folder must be on storage every host sees.

>>> save_sharded(out / "checkpoint-000100", model, optimizer, extra={"step": 100, "rng": rng_state()})  # doctest: +SKIP
>>> extra = load_sharded(out / "checkpoint-000100", model, optimizer)                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from honed.errors import ConfigError
from honed.utils.fs import atomic_dir

log = logging.getLogger(__name__)

EXTRA_FILE = "extra.pt"
METADATA_FILE = ".metadata"  # DCP's own name for its index


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def _world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def _options(*, full: bool = False, trainable_only: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (a LoRA run's base) are not saved: they come back from the base model itself.
    # strict=False because those frozen keys are then absent on load; `_check_keys` does the
    # checking strict would have done for the keys that are saved.
    return StateDictOptions(full_state_dict=full, cpu_offload=full, ignore_frozen_params=trainable_only, strict=False)


def _without_frozen(model, state: dict) -> dict:
    """`ignore_frozen_params` drops a frozen weight under its first name only: a tied one (the LM head
    sharing the embedding matrix) stays under its second name, which would put a vocabulary-sized
    matrix into every LoRA checkpoint. Drop every name of every frozen weight."""
    frozen = {name.removeprefix("module.") for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def _trainable_state(model, optimizer) -> dict:
    """What a checkpoint holds: {"model": trainable weights (and buffers), "optim": optimizer state},
    by parameter name, as this rank's shards."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    return {"model": _without_frozen(model, model_state), "optim": optim_state}


def _broadcast_path(path: Path | None) -> Path:
    dist = _dist()
    if dist is None:
        return path
    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def save_sharded(ckpt_dir: Path, model, optimizer, *, extra: dict) -> None:
    """Write the trainable weights and optimizer state of every rank, plus `extra`, as folder `ckpt_dir`.

    Every rank calls it (collective). `extra` is rank 0's (tensors, numbers, strings, lists and dicts
    of them, e.g. the step, the data position and `scheduler.state_dict()`), except `extra["rng"]`,
    which each rank passes for itself and which is kept for every rank. An existing `ckpt_dir` is
    replaced only once the new one is complete.
    """
    import torch.distributed.checkpoint as dcp

    dist, ckpt_dir = _dist(), Path(ckpt_dir)
    rngs = [extra.get("rng")]
    if dist is not None:
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(extra.get("rng"), gathered, dst=0)
        rngs = gathered
    # Rank 0 owns the temporary folder and its rename; the others write their shards into it.
    with atomic_dir(ckpt_dir) if _rank() == 0 else contextlib.nullcontext() as tmp:
        tmp = _broadcast_path(tmp)
        dcp.save(_trainable_state(model, optimizer), checkpoint_id=tmp)
        if _rank() == 0:
            blob = {"extra": {k: v for k, v in extra.items() if k != "rng"}, "rng_by_rank": rngs,
                    "world_size": _world_size()}
            torch.save(blob, tmp / EXTRA_FILE)
    if dist is not None:
        dist.barrier()  # nobody goes on (and perhaps reads it) before rank 0 has renamed it into place


def _check_complete(ckpt_dir: Path) -> None:
    if not ckpt_dir.is_dir():
        raise ConfigError(f"{ckpt_dir}: no such checkpoint folder; give training.resume a checkpoint-NNNNNN folder "
                          "of a run (or true for its latest)")
    missing = [name for name in (METADATA_FILE, EXTRA_FILE) if not (ckpt_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{ckpt_dir}: not a complete sharded checkpoint (no {' and no '.join(missing)}); it was "
                          "not written by a distributed run, or its save was cut short: resume from an earlier checkpoint")


def _check_keys(ckpt_dir: Path, wanted: dict) -> None:
    """The trainable weights saved must be exactly the ones this model trains (DCP itself only
    notices keys that are missing from the checkpoint, not ones that are left over)."""
    from torch.distributed.checkpoint import FileSystemReader

    saved = {k.split(".", 1)[1] for k in FileSystemReader(str(ckpt_dir)).read_metadata().state_dict_metadata
             if k.startswith("model.")}
    unknown, absent = sorted(saved - set(wanted)), sorted(set(wanted) - saved)
    if unknown or absent:
        which = f"it has weights for {unknown[0]}, which this model does not train" if unknown \
            else f"it has no weights for {absent[0]}"
        raise ConfigError(f"{ckpt_dir}: checkpoint does not match this model/config ({which}); resume with the config "
                          "that wrote it")


def load_sharded(ckpt_dir: Path, model, optimizer) -> dict:
    """Restore what `save_sharded` wrote into `model` and `optimizer`, on any number of ranks; return `extra`.

    Every rank calls it after wrapping the model (FSDP2, DDP or none) and building the optimizer the
    same way as the run that saved it. The returned `extra["rng"]` is this rank's saved RNG state when
    the number of ranks is unchanged, and None when it changed (the ranks' random streams cannot be
    continued then); `extra["saved_world_size"]` says how many ranks wrote it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    ckpt_dir = Path(ckpt_dir)
    _check_complete(ckpt_dir)
    state = _trainable_state(model, optimizer)
    _check_keys(ckpt_dir, state["model"])
    try:
        dcp.load(state, checkpoint_id=ckpt_dir)
    except (CheckpointException, RuntimeError, ValueError) as err:  # a missing shard, a changed shape
        # (CheckpointException derives from BaseException, and carries every rank's traceback: keep its last line)
        raise ConfigError(f"{ckpt_dir}: the sharded checkpoint cannot be read into this run "
                          f"({str(err).strip().splitlines()[-1][:300]}); was a file of it removed, or lora/model changed?") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_options())
    blob = torch.load(ckpt_dir / EXTRA_FILE, map_location="cpu", weights_only=True)
    extra, rngs, saved = dict(blob["extra"]), blob["rng_by_rank"], blob["world_size"]
    same = saved == _world_size()
    if not same and _rank() == 0:
        log.info("%s was saved by %d ranks and resumes on %d: weights and optimizer state are resharded; "
                 "each rank's random state starts afresh", ckpt_dir, saved, _world_size())
    extra["rng"] = rngs[_rank()] if same else None
    extra["saved_world_size"] = saved
    return extra


def full_state_dict_for_saving(model, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of `model` on CPU, on rank 0; an empty dict on the other ranks.

    Every rank calls it (it gathers the shards). For the final save: `model.save_pretrained(out,
    state_dict=full_state_dict_for_saving(model))` on rank 0, or with `trainable_only=True` a LoRA
    run's adapter weights alone (keys as `model.named_parameters()` names them).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    if _dist() is None:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        state = get_model_state_dict(model, options=_options(full=True, trainable_only=trainable_only))
    return _without_frozen(model, state) if trainable_only else state
