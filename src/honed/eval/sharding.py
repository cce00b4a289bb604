"""`honed eval` across the processes of a torchrun job: each rank answers and scores its share of
the batches, and every rank gets all results back in the original sample order.

Whole batches are dealt out, not single samples: batch k (of `batch_size` consecutive items) goes
to rank k mod world_size. A left-padded generation batch or a right-padded loss batch then holds
exactly the rows it holds in one process, so each row's numbers are bit for bit the ones a single
process computes (padding changes the shapes the kernels see, and with them the rounding).

Rank 0 alone turns the gathered answers and losses into metrics and writes the report; the other
ranks stop after the last model's last batch.

>>> shard = eval_shard(torch.device("cpu"))                                   # doctest: +SKIP
>>> replies = shard.map_batches(convs, 8, lambda chunk, k: bot.generate(chunk))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from honed.train.distributed import DistContext, init_distributed, launched_by_torchrun
from honed.train.losses import sample_loss_sums


@dataclass(frozen=True)
class EvalShard:
    """This process's part of an evaluation (the default: a single process that does everything)."""

    ctx: DistContext = field(default_factory=DistContext)

    @property
    def is_main(self) -> bool:
        """Rank 0: computes the metrics and writes the report."""
        return self.ctx.is_main

    @property
    def world_size(self) -> int:
        return self.ctx.world_size if self.ctx.enabled else 1

    def owns(self, batch_index: int) -> bool:
        """Whether this rank runs batch `batch_index`."""
        return batch_index % self.world_size == self.ctx.rank

    def share_size(self, n_items: int, batch_size: int) -> int:
        """How many of `n_items` this rank runs (its progress bar's total).

        >>> EvalShard().share_size(10, 4)
        10
        """
        return sum(min(batch_size, n_items - start) for k, start in enumerate(range(0, n_items, batch_size)) if self.owns(k))

    def map_batches(self, items: Sequence, batch_size: int, work: Callable[[list, int], list]) -> list:
        """`work(chunk, k)` (one result per item of the chunk) over this rank's batches of `items`;
        returns the results of ALL items, in order, on every rank.

        >>> EvalShard().map_batches([1, 2, 3], 2, lambda chunk, k: [x * 10 + k for x in chunk])
        [10, 20, 31]
        """
        mine = []
        for k, start in enumerate(range(0, len(items), batch_size)):
            if self.owns(k):
                chunk = list(items[start : start + batch_size])
                results = list(work(chunk, k))
                if len(results) != len(chunk):
                    raise RuntimeError(f"batch {k}: {len(results)} results for {len(chunk)} items")
                mine.append((start, results))
        out: list = [None] * len(items)
        for part in self.all_ranks(mine):
            for start, results in part:
                out[start : start + len(results)] = results
        return out

    def all_ranks(self, value) -> list:
        """`value` from every rank, in rank order (`[value]` in a single process)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def eval_shard(device: torch.device, timeout_s: int = 600) -> EvalShard:
    """Join torchrun's process group when this process was started by torchrun (nccl on CUDA,
    gloo on the CPU; a collective waits at most `timeout_s`), else a single-process EvalShard."""
    if not launched_by_torchrun():
        return EvalShard()
    from honed.config import DistributedConfig

    # init_distributed reads a training config's `distributed` section; eval has only these two keys' worth.
    return EvalShard(init_distributed(SimpleNamespace(distributed=DistributedConfig(timeout_s=timeout_s)), device))


def loss_sums(model, sequences: Sequence, *, device, pad_id: int, batch_size: int, shard: EvalShard | None = None
              ) -> list[tuple[float, int]]:
    """(summed loss, scored tokens) of each tokenized sequence, as `sample_loss_sums` computes them,
    with its length-sorted batches dealt out across ranks (every rank gets the whole list)."""
    shard = shard or EvalShard()
    # sample_loss_sums batches sequences of similar length; sort the same way first, so each rank's
    # batch is one of the batches a single process would form.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    sums = shard.map_batches([sequences[i] for i in order], batch_size,
                             lambda chunk, _: sample_loss_sums(model, chunk, device=device, pad_id=pad_id, batch_size=len(chunk)))
    out: list = [None] * len(sequences)
    for i, result in zip(order, sums):
        out[i] = result
    return out
