"""Causal-LM losses from logits, summed over trained tokens (labels != -100), so gradient
accumulation weights every token equally. Below the engine: the plain training path, evaluation and
data scoring all compute their loss here.

>>> import torch
>>> logits = torch.zeros(1, 3, 5); labels = torch.tensor([[-100, 1, 2]])
>>> loss_sum, n = causal_lm_loss_sum(logits, labels)
>>> round(loss_sum.item() / n, 4)  # uniform logits over 5 classes: log(5)
1.6094
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def model_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward pass without a KV cache (packed rows rely on position_ids and no attention mask)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    return model(**inputs, use_cache=False).logits


def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of predicting token t+1 from position t, and the mask of trained positions."""
    target = labels[:, 1:]
    pred = logits[:, :-1].float()
    mask = target != IGNORE
    losses = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.clamp_min(0).reshape(-1), reduction="none")
    return losses.view_as(target) * mask, mask


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens)."""
    losses, mask = shifted_token_losses(logits, labels)
    return losses.sum(), int(mask.sum())


def count_trained_tokens(labels: torch.Tensor) -> int:
    """Positions whose next-token label trains (what `causal_lm_loss_sum` counts)."""
    return int((labels[:, 1:] != IGNORE).sum())
