"""Training paths: how a training step computes its loss on a given model and device.

`honed train` asks `select_path` once per run; the chosen path patches the model (fused kernels,
where it has them) and computes the summed token loss of a batch. The plain path is transformers
as it is, and is what runs on CPU and on architectures a faster path does not cover. Every path
logs its name, so a run's log says which one it took.

>>> path = select_path(model, resolve_engine_settings(cfg, device)); model = path.prepare(model)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
from typing import Callable, Protocol, TypeVar

import torch

from honed.data.packing import uses_varlen_attention
from honed.engine.settings import EngineSettings, resolve_engine_settings  # noqa: F401  (the engine's input)
from honed.model.lm_loss import causal_lm_loss_sum, model_logits, shifted_token_losses

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrainingPath(Protocol):
    name: str
    # Set by `prepare`: True when the model's attention takes a micro-batch as one row without padding
    # (sample boundaries from position_ids), so `collate(..., padding_free=True)` is what to feed it.
    padding_free: bool

    def prepare(self, model): ...

    def describe(self) -> dict:
        """One summary of what the path did (name, padding_free, and what else it has: memory plan,
        embeddings_on_host, cuda_graphs ...); run_info.json and `honed bench` report it."""
        ...

    def loss_sum(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...

    def token_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(label t+1 | tokens ≤ t) of every position, fp32, shape [rows, seq_len - 1]; 0 where
        the shifted label is -100. Per-sample sums come from batch["sample_index"][:, 1:]."""
        ...


class PlainPath:
    """transformers' forward, full logits, cross-entropy summed over trained tokens."""

    name = "plain"
    padding_free = False

    def prepare(self, model):
        self.padding_free = uses_varlen_attention(model)  # transformers' flash attention, when the model asked for it
        return model

    def loss_sum(self, model, batch):
        return causal_lm_loss_sum(model_logits(model, batch), batch["labels"])

    def token_logps(self, model, batch):
        losses, _ = shifted_token_losses(model_logits(model, batch), batch["labels"])
        return -losses

    def describe(self) -> dict:
        return {"name": self.name, "padding_free": self.padding_free}


class OutOfGpuMemory(RuntimeError):
    """Training ran out of GPU memory and the path had no leaner plan left."""


def with_memory_fallback(path: TrainingPath, model, accumulate: Callable[[], T], agree: Callable[[bool], bool] | None = None) -> T:
    """Run `accumulate()` (the forward and backward passes of one optimizer step). When it runs out of
    GPU memory and the path can keep less (`recover_from_oom()` is True: it now recomputes more), the
    partial gradients are dropped and the same micro-batches run again, so the step is as if it had
    fitted the first time. Each retry is logged by the path; with nothing left to give, it raises
    `OutOfGpuMemory` saying what to change. Under torchrun, `accumulate` raises the error on every rank
    at once (honed.train.distributed.oom_agreement) and `agree(recovered)` makes every rank retry only
    when all of them could replan."""
    while True:
        try:
            return accumulate()
        except torch.cuda.OutOfMemoryError as err:
            message = str(err).splitlines()[0][:300]
        # Outside the except block, so the traceback's frames (and their tensors) are already freed.
        model.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        recover = getattr(path, "recover_from_oom", None)
        recovered = recover is not None and recover()
        if agree is not None:
            recovered = agree(recovered)
        if not recovered:
            raise OutOfGpuMemory(
                f"out of GPU memory on the {path.name} path ({message}); lower training.batch_size or data.max_seq_length, "
                "use method: qlora, or set training.memory: offload"
            )


# Faster paths register here as (name, factory(model, settings) -> TrainingPath | None);
# the first that accepts the model wins.
PATHS: list = []


def select_path(model, settings: EngineSettings) -> TrainingPath:
    """The first registered path that takes `model` under `settings`, else the plain path."""
    device = settings.device
    for name, factory in PATHS:
        path = factory(model, settings)
        if path is not None:
            log.info("training path: %s", name)
            return path
    log.info("training path: plain transformers (%s)", "CPU" if device.type == "cpu" else "no faster path covers this model")
    return PlainPath()


def _register_builtin_paths() -> None:
    from honed.engine.fp8 import refuse_fp8_off_the_fused_path
    from honed.engine.fused import fused_path_factory

    PATHS.append(("fused", fused_path_factory))
    # After the fused path: fp8 needs it, and a run it declined must stop rather than train in bf16.
    PATHS.append(("fp8-guard", refuse_fp8_off_the_fused_path))


_register_builtin_paths()
