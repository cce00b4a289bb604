"""What each epoch trains on, and in what order.

`EpochData` is the training loop's only view of its samples: `samples(epoch)` (the same list
every epoch unless a strategy changes it), `order(epoch)` (sample indices in training order,
repeats allowed) and `observe(indices, losses)` (per-sample losses seen during training, for
strategies that react to them). Its `state_dict` is saved in every checkpoint, so a resumed run
sees exactly the order the uninterrupted run would have.

>>> data = EpochData(["a", "b", "c"], seed=0)
>>> sorted(data.order(0)) == [0, 1, 2] and data.order(0) == data.order(0)
True
"""

from __future__ import annotations

import random


class EpochData:
    """The default strategy: every sample once per epoch, shuffled by (seed, epoch)."""

    def __init__(self, samples: list, *, seed: int):
        self._samples = samples
        self.seed = seed

    def samples(self, epoch: int) -> list:
        return self._samples

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples(epoch))))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def observe(self, indices: list[int], losses: list[float]) -> None:
        """Per-sample training losses of the last step (the default strategy ignores them)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
