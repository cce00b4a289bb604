"""Training paths: how a training step computes its loss on a given model and device.

`honed train` asks `select_path` once per run; the chosen path patches the model (fused kernels,
where it has them) and computes the summed token loss of a batch. The plain path is transformers
as it is, and is what runs on CPU and on architectures a faster path does not cover. Every path
logs its name, so a run's log says which one it took.

>>> # path = select_path(model, cfg, device); model = path.prepare(model)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from honed.train.losses import causal_lm_loss_sum, model_logits

log = logging.getLogger(__name__)


class TrainingPath(Protocol):
    name: str

    def prepare(self, model): ...

    def loss_sum(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...


class PlainPath:
    """transformers' forward, full logits, cross-entropy summed over trained tokens."""

    name = "plain"

    def prepare(self, model):
        return model

    def loss_sum(self, model, batch):
        return causal_lm_loss_sum(model_logits(model, batch), batch["labels"])


# Faster paths register here as (name, factory(model, cfg, device) -> TrainingPath | None);
# the first that accepts the model wins.
PATHS: list = []


def select_path(model, cfg, device: torch.device) -> TrainingPath:
    for name, factory in PATHS:
        path = factory(model, cfg, device)
        if path is not None:
            log.info("training path: %s", name)
            return path
    log.info("training path: plain transformers (%s)", "CPU" if device.type == "cpu" else "no faster path covers this model")
    return PlainPath()


def _register_builtin_paths() -> None:
    from honed.engine.fused import fused_path_factory

    PATHS.append(("fused", fused_path_factory))


_register_builtin_paths()
