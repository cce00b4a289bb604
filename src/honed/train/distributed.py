"""Runs across processes through torch.distributed: the process group, DDP, and rank-0 output.

torchrun (or `honed train CONFIG --nproc-per-node N`, which calls torchrun's own launcher) starts
one process per GPU and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR in each one's
environment; `init_distributed` reads them. Without that environment nothing here does anything:
`DistContext()` is a single process, and every helper below is then a no-op.

How a distributed step stays equal to a one-process step (honed.train.recipe.train_step):
- every rank plans the same global micro-batches of an epoch (same seed, same data), and an
  optimizer step takes `world_size * gradient_accumulation_steps` of them; rank r takes every
  world_size-th one, starting at r (`rank_share`);
- the step's total weight (trained tokens for SFT) is summed over ranks before any loss is
  divided by it, and DDP's all-reduce sums gradients instead of averaging them (`_sum_gradients`),
  so the gradient is the one a single process would get over the same micro-batches.

>>> ctx = init_distributed(cfg, torch.device("cpu"))   # doctest: +SKIP
>>> ctx.is_main, ctx.world_size                          # doctest: +SKIP
(True, 2)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from honed.errors import ConfigError, HonedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Which process this is in a torchrun job (the defaults: a single process, no process group)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: not distributed (no process group)

    @property
    def enabled(self) -> bool:
        """Launched by torchrun (even with one process): a process group exists."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files, metrics, logs and progress bars."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process torchrun started (its environment names the rank and world size)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """False only in a torchrun worker of rank > 0 (before or after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK on a GPU host under torchrun (one process per GPU),
    else `device` unchanged."""
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started local rank {index}, but this host shows {torch.cuda.device_count()} GPU(s); "
                          "use --nproc-per-node at most the number of GPUs")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(cfg, device: torch.device) -> DistContext:
    """Join torchrun's process group (once per process; later calls return the same context).

    Backend `auto` is nccl on CUDA and gloo on the CPU; every collective waits at most
    `distributed.timeout_s`, so a rank that died stops the others with an error instead of a hang.
    Ranks other than 0 log warnings only. No torchrun environment → `DistContext()`.
    """
    if not launched_by_torchrun():
        return DistContext()
    import torch.distributed as dist

    dcfg = cfg.distributed
    backend = dcfg.backend if dcfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend=nccl needs CUDA GPUs; use backend: gloo (or auto) on the CPU")
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=dcfg.timeout_s), **kwargs)
        atexit.register(_destroy_group)
    ctx = DistContext(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=dist.get_world_size(),
                      backend=dist.get_backend())
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank speaks; the others only warn
    return ctx


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):  # at exit, after a peer died, there is nobody to tell
            dist.destroy_process_group()


# ---- collectives (no-ops on a single process) -----------------------------------------------------


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others may read)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """The element-wise sum of `values` over all ranks (one collective for the whole list)."""
    if not ctx.enabled:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(ctx, device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def union_of_keys(ctx: DistContext, keys) -> list[str]:
    """The sorted union of every rank's `keys`, the same list on each rank (a rank that had nothing to
    evaluate has no metric names of its own, yet must join the same all-reduce)."""
    if not ctx.enabled or ctx.world_size == 1:
        return sorted(keys)
    import torch.distributed as dist

    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, sorted(keys))
    return sorted(set().union(*gathered))


def any_rank(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (so all ranks stop at the same step)."""
    if not ctx.enabled:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=_collective_device(ctx, device))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_ranks(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on all of them."""
    return not any_rank(ctx, not flag, device)


def _collective_device(ctx: DistContext, device: torch.device) -> torch.device:
    return device if ctx.backend == "nccl" else torch.device("cpu")


def rank_share(ctx: DistContext, items: list) -> list:
    """This rank's part of a global list: items r, r + world, r + 2·world, ... (in order)."""
    return items[ctx.rank :: ctx.world_size] if ctx.enabled else items


def sharded_scorer(ctx: DistContext, scorer):
    """A scorer (samples → per-sample losses) that scores this rank's share and gathers the rest,
    so every rank gets the same full list (hard mining must learn the same thing on each rank)."""
    if not ctx.enabled or ctx.world_size == 1:
        return scorer

    def score(samples: list) -> list[float]:
        import torch.distributed as dist

        mine = scorer(rank_share(ctx, samples))
        gathered: list = [None] * ctx.world_size
        dist.all_gather_object(gathered, mine)
        out = [0.0] * len(samples)
        for r, losses in enumerate(gathered):
            out[r :: ctx.world_size] = losses
        return out

    return score


def main_first(ctx: DistContext, fn) -> None:
    """`fn()` on rank 0, then on the others (e.g. rank 0 writes a cache file the others then read)."""
    if ctx.is_main:
        fn()
    barrier(ctx)
    if not ctx.is_main:
        fn()


# ---- the global batch ----------------------------------------------------------------------------


def accumulation_for(ctx: DistContext, configured: int, saved_micro_per_step: int | None) -> int:
    """Gradient accumulation steps of this process so that an optimizer step covers the same global
    micro-batches as the checkpoint being resumed (`saved_micro_per_step`; None: a fresh run, where
    the config's value holds and the global batch is world × batch × accumulation)."""
    if not saved_micro_per_step or saved_micro_per_step == ctx.world_size * configured:
        return configured
    if saved_micro_per_step % ctx.world_size:
        raise ConfigError(f"training.resume: the checkpoint took {saved_micro_per_step} micro-batches per optimizer step, which "
                          f"{ctx.world_size} processes cannot share evenly; resume on a number of processes that divides it")
    accumulation = saved_micro_per_step // ctx.world_size
    log.warning("resuming on %d process(es): training.gradient_accumulation_steps %d → %d, to keep the checkpoint's global batch "
                "(%d micro-batches per optimizer step)", ctx.world_size, configured, accumulation, saved_micro_per_step)
    return accumulation


def log_global_batch(ctx: DistContext, batch_size: int, accumulation: int) -> dict:
    """Say once what an optimizer step takes across processes; returns it for run_info.json."""
    rows = ctx.world_size * batch_size * accumulation
    log.info("global batch = %d process(es) × %d rows per micro-batch × %d accumulation = %d rows per optimizer step",
             ctx.world_size, batch_size, accumulation, rows)
    return {"world_size": ctx.world_size, "gradient_accumulation_steps": accumulation, "global_batch_rows": rows}


# ---- DDP ------------------------------------------------------------------------------------------


class _LossModule(torch.nn.Module):
    """What DDP wraps: the objective's loss of the model on one batch. Wrapping the loss (not the
    model's forward) lets every training path, the fused one included, run under DDP unchanged."""

    def __init__(self, model, path, objective):
        super().__init__()
        self.model = model
        self._path, self._objective = path, objective  # not modules: DDP sees only the model's weights

    def forward(self, batch):
        return self._objective.loss(self._path, self.model, batch)


def _sum_gradients(process_group, bucket):
    """DDP comm hook: all-reduce each bucket as a SUM (DDP's default averages over ranks). The losses
    are already divided by the global step weight, so the sum is the single-process gradient."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_ddp(ctx: DistContext, model, path, objective, *, bucket_mb: int, device: torch.device):
    """DistributedDataParallel over the loss of `model` (see _LossModule): gradients of the trainable
    weights are all-reduced in buckets of `bucket_mb` MB, overlapped with backward. Rank 0's
    weights are broadcast to the others at construction."""
    from torch.nn.parallel import DistributedDataParallel

    # Buffers (rotary tables) are equal on every rank: no broadcast before each forward. The keyword
    # was renamed in torch 2.13; 2.11 knows only the old one.
    import inspect

    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(_LossModule(model, path, objective), device_ids=[device.index] if device.type == "cuda" else None,
                                  bucket_cap_mb=bucket_mb, **no_buffer_sync)
    ddp.register_comm_hook(state=None, hook=_sum_gradients)
    return ddp


# ---- running out of GPU memory on one rank -----------------------------------------------------------
#
# engine.with_memory_fallback retries a step with a leaner memory plan when the GPU runs out. With
# several ranks, a rank may only retry where no peer waits for it in a collective, and every rank must
# retry (and replan) with it. Under DDP the only collectives of a step are the gradient all-reduces of
# its last backward: every micro-batch's forward (the last one's too, under `no_sync`) and the earlier
# backwards run first, then all ranks say whether one of them ran out (`oom_agreement`), and only then
# does the last backward synchronise (`sync_next_backward`). An out-of-memory in that last backward, or
# anywhere in an FSDP step (each layer's weights are gathered by all ranks together), leaves the peers
# inside a collective: the job stops at once (`oom_stops_the_job`), never hangs.


class RankOutOfMemory(HonedError):
    """A rank ran out of GPU memory while its peers waited for it in a collective: the job stops."""


class StepOutOfMemory(torch.cuda.OutOfMemoryError):
    """Raised on every rank when any rank ran out of GPU memory before the step's collectives: all of
    them drop the step's gradients and retry it (with a leaner plan) together."""


def _oom_message(err: BaseException) -> str:
    """The first line of an out-of-memory error (CUDA's runs on with allocator advice), for one message."""
    return str(err).splitlines()[0][:200] if str(err) else "out of memory"


def ranks_out_of_memory(ctx: DistContext, short: bool, device: torch.device) -> list[int]:
    """The ranks for which `short` is true (one all-gather of a flag per rank)."""
    import torch.distributed as dist

    flags = torch.zeros(ctx.world_size, dtype=torch.int32, device=_collective_device(ctx, device))
    flags[ctx.rank] = int(short)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


@contextlib.contextmanager
def oom_agreement(ctx: DistContext, device: torch.device, *, enabled: bool = True):
    """Around the part of a step that runs no collective: an out-of-memory error there ends the block
    on this rank, then every rank learns which ranks ran out, and each raises StepOutOfMemory when one
    did (so that all retry the step together). Nothing is exchanged on one process or when not `enabled`."""
    if not (enabled and ctx.enabled and ctx.world_size > 1):
        yield
        return
    error = None
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        error = _oom_message(err)
    short = ranks_out_of_memory(ctx, error is not None, device)
    if short:
        which = ", ".join(map(str, short))
        raise StepOutOfMemory(f"rank {which} of {ctx.world_size} ran out of GPU memory in this step" + (f" ({error})" if error else ""))


@contextlib.contextmanager
def oom_stops_the_job(ctx: DistContext, where: str):
    """Around a part of a step whose collectives the peers may already be waiting in: an out-of-memory
    error there aborts the process group (the peers' collectives fail at once instead of waiting for
    `distributed.timeout_s`) and raises RankOutOfMemory naming the rank and what to change."""
    if not (ctx.enabled and ctx.world_size > 1):
        yield
        return
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        message = _oom_message(err)
    else:
        return
    abort_process_group()
    raise RankOutOfMemory(
        f"out of GPU memory on rank {ctx.rank} of {ctx.world_size} {where} ({message}); the other ranks were waiting for it in a "
        "collective, so it cannot retry alone and the job stops. Lower training.batch_size or data.max_seq_length, set "
        "training.gradient_checkpointing: true or training.memory: offload, or use more GPUs (distributed.strategy: fsdp)")


def abort_process_group() -> None:
    """End this rank's part of the process group now, pending collectives included, so that the peers'
    collectives fail at once (gloo closes its connections; NCCL aborts its communicators)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    except Exception:  # a backend without abort (or an older torch): destroying the group closes it too
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def sync_next_backward(ddp) -> None:
    """Make the next backward all-reduce the gradients, after a forward run under `ddp.no_sync()`:
    the two calls DDP's own forward makes when it synchronises (with find_unused_parameters off)."""
    ddp.require_forward_param_sync = True
    ddp.reducer.prepare_for_forward()
    ddp.reducer.prepare_for_backward([])
