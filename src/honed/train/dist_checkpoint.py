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
import io
import logging
import warnings
from pathlib import Path
from typing import Callable

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


@contextlib.contextmanager
def _single_process_quiet():
    # DCP warns each time it runs without a process group; one process is a supported case here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


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


def _from_rank0(*values):
    """Rank 0's `values` on every rank (picklable objects)."""
    dist = _dist()
    if dist is None:
        return values
    box = list(values)
    dist.broadcast_object_list(box, src=0)
    return tuple(box)


def _serialized(blob: dict) -> tuple[bytes | None, str | None]:
    """`blob` as torch.save bytes, and None; or None and why it cannot be saved. It must load back with
    weights_only=True (tensors, numbers, strings, lists, dicts), as resuming will read it."""
    buffer = io.BytesIO()
    try:
        torch.save(blob, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as err:  # pickling errors have no common base class
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return buffer.getvalue(), None


def save_sharded(ckpt_dir: Path, model, optimizer, *, extra: dict, files: dict[str, str | bytes] | None = None,
                 write: Callable[[Path], None] | None = None) -> None:
    """Write the trainable weights and optimizer state of every rank, plus `extra`, as folder `ckpt_dir`.

    Every rank calls it (collective). `extra` is rank 0's (tensors, numbers, strings, lists and dicts
    of them, e.g. the step, the data position and `scheduler.state_dict()`), except `extra["rng"]`,
    which each rank passes for itself and which is kept for every rank. `files` (name → text or
    bytes, rank 0's) are written into the folder too, before it appears (e.g. trainer_state.json), and
    `write(folder)`, called on rank 0 only, may add more (e.g. the peft adapter files of the gathered
    adapter, so the checkpoint is usable as an adapter as a one-process checkpoint is).
    An existing `ckpt_dir` is replaced only once the new one is complete; an `extra` that cannot be
    saved is a TypeError on every rank, before anything is written.
    """
    import torch.distributed.checkpoint as dcp

    dist, ckpt_dir, main = _dist(), Path(ckpt_dir), _rank() == 0
    rngs = [extra.get("rng")]
    if dist is not None:
        rngs = [None] * dist.get_world_size() if main else None
        dist.gather_object(extra.get("rng"), rngs, dst=0)
    payload, problem = None, None
    if main:
        payload, problem = _serialized({"extra": {k: v for k, v in extra.items() if k != "rng"}, "rng_by_rank": rngs,
                                        "world_size": _world_size()})
    # Rank 0 owns the temporary folder and its rename; the others write their shards into it.
    with atomic_dir(ckpt_dir) if main else contextlib.nullcontext() as tmp:
        tmp, problem = _from_rank0(tmp, problem)
        if problem:
            raise TypeError(f"{ckpt_dir}: the checkpoint's extra state cannot be saved ({problem})")
        with _single_process_quiet():
            dcp.save(_trainable_state(model, optimizer), checkpoint_id=tmp)
        if main:
            (tmp / EXTRA_FILE).write_bytes(payload)
            for name, content in (files or {}).items():
                (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
            if write is not None:
                write(tmp)
    if dist is not None:
        dist.barrier()  # nobody goes on (and perhaps reads it) before rank 0 has renamed it into place


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` is a complete folder written by `save_sharded` (else: another format, or unfinished)."""
    return all((Path(path) / name).is_file() for name in (METADATA_FILE, EXTRA_FILE))


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
        with _single_process_quiet():
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
