"""Optimizer and learning-rate schedule.

>>> import torch
>>> p = torch.nn.Parameter(torch.zeros(2))
>>> opt = torch.optim.AdamW([p], lr=1.0)
>>> sched = build_scheduler(opt, "linear", warmup_steps=2, total_steps=6)
>>> [round(s, 2) for s in lr_factors("linear", 2, 6)]
[0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

import math

import torch

from honed.config import TrainingConfig
from honed.errors import ConfigError


def build_optimizer(model, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or bitsandbytes' 8-bit AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: check lora.target_modules against the model's module names")
    # Biases and norm weights are not decayed: decay there only shrinks scales, it does not regularise.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw_8bit":
        if not params[0].is_cuda:
            raise ConfigError("training.optimizer: adamw_8bit needs a CUDA GPU (bitsandbytes); use adamw on CPU")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("training.optimizer: adamw_8bit needs bitsandbytes: pip install 'honed[gpu]'") from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=cfg.adam_betas)
    fused = params[0].is_cuda
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), fused=fused)


def lr_factor(kind: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at 0-based `step`: linear warm-up, then constant/linear/cosine decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_factors(kind: str, warmup_steps: int, total_steps: int) -> list[float]:
    """The whole schedule, one factor per step (for plots and tests)."""
    return [lr_factor(kind, s, warmup_steps, total_steps) for s in range(total_steps)]


def build_scheduler(optimizer, kind: str, *, warmup_steps: int, total_steps: int):
    """A LambdaLR following `lr_factor`; stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(kind, s, warmup_steps, total_steps))


def warmup_steps_for(cfg: TrainingConfig, total_steps: int) -> int:
    """`warmup_steps` when given, else `warmup_ratio` of the run."""
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
