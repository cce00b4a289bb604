"""One value for every rank of a distributed run: rank 0's.

A choice measured on each rank's own GPU (fp8 bases, host gate/up layers) differs a little between
ranks; ranks that chose differently would train different models, or plan differently, under one
step. Every rank must call this, measured or not.

>>> rank0_int(7, torch.device("cpu"))  # no process group: the value as it is
7
"""

from __future__ import annotations

import torch


def rank0_int(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank (a broadcast over the process group; on GPUs with NCCL, from `device`)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    carried = torch.tensor([value], dtype=torch.int64, device=on)
    dist.broadcast(carried, src=0)
    return int(carried.item())
