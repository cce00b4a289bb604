"""What the training engine needs to know about a run, resolved once from the config.

The recipe builds one `EngineSettings` per run (`resolve_engine_settings(cfg, device)`) and hands it
to `select_path`; the paths read nothing else of the config. Precision is resolved here and only
here: `auto` becomes bf16 or fp32 by device, and fp8 is checked against the device before any model
loads (method and engine are checked when the config is validated, in honed.config).

>>> from honed.config import config_from_dict
>>> cfg = config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}})
>>> s = resolve_engine_settings(cfg, torch.device("cpu"))
>>> s.precision, s.compute_dtype, s.tokens_per_micro_batch  # batch_size 4 × max_seq_length 1024
('fp32', None, 4096)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from honed.utils.precision import autocast_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """A training run as the engine sees it (every field resolved; nothing left `auto` but policies)."""

    device: torch.device
    precision: str  # resolved training.precision: bf16 / fp16 / fp32 / fp8
    engine: Literal["auto", "plain"] = "auto"  # training.engine: plain never takes the fused path
    batch_size: int = 1  # rows per micro-batch
    max_seq_length: int = 1024  # tokens per row, at most
    sequences_per_item: int = 1  # preference objectives: a pair (or a KTO sample and its mismatched twin) is two sequences
    memory: Literal["auto", "none", "checkpoint", "offload"] = "auto"  # training.memory: the activation policy
    memory_budget_gib: float | None = None  # training.memory_budget_gib: plan for this much instead of the free memory
    fp8_bases: str | None = None  # precision fp8: "fp8"/"bf16" bases chosen before (a resumed run's checkpoint), taken as they are
    host_memory_gib: float | None = None  # training.host_memory_gib: the host memory offloading plans with, instead of what is available
    host_mlp_layers: int | str = 0  # training.host_mlp_layers: kept layers whose gate/up activations wait in host memory, or "auto"
    gradient_checkpointing: bool = False  # training.gradient_checkpointing: recompute asked for explicitly
    cuda_graphs: bool = False  # training.cuda_graphs
    embeddings_on_host: bool | None = None  # training.embeddings_on_host: None = when layers recompute

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast); fp8 computes in bf16 (only frozen LoRA bases are fp8)."""
        return autocast_dtype(self.precision)

    @property
    def fp8(self) -> bool:
        return self.precision == "fp8"

    @property
    def tokens_per_micro_batch(self) -> int:
        """The most tokens a micro-batch can hold: with a preference objective each of `batch_size` items
        brings two sequences of up to max_seq_length, so the memory plan counts both."""
        return self.sequences_per_item * self.batch_size * self.max_seq_length

    @property
    def forced_memory(self) -> str | None:
        """The memory mode the user fixed (None: plan by the free memory). gradient_checkpointing asks for recompute."""
        if self.memory != "auto":
            return self.memory
        return "checkpoint" if self.gradient_checkpointing else None


def resolve_precision(precision: str, device: torch.device) -> str:
    """`training.precision` on `device`: `auto` is bf16 on a GPU that has it, else fp32. `fp8` is
    checked against the device here, before the model loads (a ConfigError naming the key)."""
    if precision == "fp8":
        from honed.engine.fp8 import check_fp8_device

        check_fp8_device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device.type == "cpu":
        log.warning("training.precision=%s on CPU runs slowly; fp32 is the CPU default", precision)
    return precision


def resolve_engine_settings(cfg, device: torch.device) -> EngineSettings:
    """The engine's settings of a TrainConfig on `device` (precision resolved and checked once)."""
    t = cfg.training
    return EngineSettings(
        device=device, precision=resolve_precision(t.precision, device), engine=t.engine, batch_size=t.batch_size,
        max_seq_length=cfg.data.max_seq_length, sequences_per_item=1 if getattr(cfg, "objective", "sft") == "sft" else 2, memory=t.memory, memory_budget_gib=t.memory_budget_gib,
        host_memory_gib=t.host_memory_gib, host_mlp_layers=t.host_mlp_layers,
        gradient_checkpointing=t.gradient_checkpointing, cuda_graphs=t.cuda_graphs, embeddings_on_host=t.embeddings_on_host,
    )
