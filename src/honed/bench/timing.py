"""Timing and memory of `honed bench`'s steps: warm-up, then timed steps bounded by CUDA events."""

from __future__ import annotations

import itertools
import os
import statistics
import time


def batch_order(warmup: int, steps: int, n_batches: int = 4) -> list[int]:
    """Which batch each step trains on: peer_bench.py restarts its step count after warm-up.

    >>> batch_order(3, 6)
    [0, 1, 2, 0, 1, 2, 3, 0, 1]
    """
    return [i % n_batches for i in range(warmup)] + [i % n_batches for i in range(steps)]


def time_steps(step, warmup_batches: list, timed_batches: list) -> tuple[list, float, float, list[float]]:
    """Run the warm-up steps, reset the peak-memory counter, time the rest: (losses, warm-up s, timed s,
    each timed step's seconds). The steps are not synchronised one by one (that would change what is
    timed): CUDA events at the step boundaries give each step's span on the GPU's timeline."""
    import torch

    losses = []
    t_warm = time.perf_counter()
    for batch in warmup_batches:
        losses.append(step(batch))
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_warm
    torch.cuda.reset_peak_memory_stats()
    boundaries = [torch.cuda.Event(enable_timing=True) for _ in range(len(timed_batches) + 1)]
    t0 = time.perf_counter()
    boundaries[0].record()
    for batch, done in zip(timed_batches, boundaries[1:]):
        losses.append(step(batch))
        done.record()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    each = [start.elapsed_time(end) / 1000 for start, end in itertools.pairwise(boundaries)]
    return [float(x) for x in losses], warmup_s, seconds, each


def step_spread_fields(step_seconds: list[float]) -> dict:
    """RESULT keys for how steady the timed steps were: each step's seconds, their median, and the
    spread (slowest minus fastest) as a percentage of the median. A step the host cannot launch fast
    enough (many small kernels, as in a recomputed layer) varies with the machine's CPU, so a mean
    over few steps can move by more than the difference being measured.

    >>> step_spread_fields([0.4, 0.5, 0.45])
    {'step_s_each': [0.4, 0.5, 0.45], 'step_s_median': 0.45, 'step_s_spread_pct': 22.2}
    """
    median = statistics.median(step_seconds)
    return {"step_s_each": [round(x, 4) for x in step_seconds], "step_s_median": round(median, 4),
            "step_s_spread_pct": round(100 * (max(step_seconds) - min(step_seconds)) / median, 1)}


def memory_fields(pool_bytes: int = 0) -> dict:
    """Peak GPU memory since the last reset (the timed steps), allocated and reserved, in GiB.

    A replayed CUDA graph allocates nothing, so the activations it writes (in its own pool, reserved
    when it was captured) are not in the allocated peak: `pool_bytes` (`graph_pool_bytes`) is added to it, which
    counts the pool at its full size, fragmentation included (an upper bound)."""
    import torch

    return {"peak_alloc_gib": round((torch.cuda.max_memory_allocated() + pool_bytes) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def host_fields(available_bytes: float | None) -> dict:
    """RESULT key `host`: the host a run timed on, where a step that waits on the host (kernel launches,
    copies to pinned memory) varies with it: its cores, its load over the last minute, and the memory
    available to the run when it started (`engine.memory.available_host_bytes`, GiB; None: unreadable).

    >>> sorted(host_fields(64 * 2**30)["host"])
    ['available_gib', 'cpus', 'load_1m']
    >>> host_fields(64 * 2**30)["host"]["available_gib"]
    64.0
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"host": {"cpus": os.cpu_count(), "load_1m": None if load is None else round(load, 2),
                     "available_gib": None if available_bytes is None else round(available_bytes / 2**30, 1)}}
