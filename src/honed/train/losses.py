"""Causal-LM losses summed over trained tokens, so gradient accumulation weights every token equally.

>>> import torch
>>> logits = torch.zeros(1, 3, 5); labels = torch.tensor([[-100, 1, 2]])
>>> loss_sum, n = causal_lm_loss_sum(logits, labels)
>>> round(loss_sum.item() / n, 4)  # uniform logits over 5 classes: log(5)
1.6094
"""

from __future__ import annotations

import contextlib

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
    return int((labels[:, 1:] != IGNORE).sum())


@torch.no_grad()
def sample_loss_sums(model, samples, *, device, pad_id: int, batch_size: int = 8, autocast=None) -> list[tuple[float, int]]:
    """(summed loss, trained tokens) of each sample, in the order given; one sample per row, so a
    sample's loss never depends on its neighbours. Similar lengths are batched together (less
    padding); `autocast` is an optional mixed-precision context."""
    from honed.data.packing import collate_padded

    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(samples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_padded([samples[i] for i in chunk], pad_id=pad_id).items()}
        with autocast if autocast is not None else contextlib.nullcontext():
            losses, mask = shifted_token_losses(model_logits(model, batch), batch["labels"])
        for i, total, count in zip(chunk, losses.sum(dim=1).tolist(), mask.sum(dim=1).tolist()):
            out[i] = (float(total), int(count))
    return out


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, sample_index: torch.Tensor) -> dict[int, float]:
    """Mean loss of each sample in a (packed or padded) batch, keyed by its index in the batch."""
    losses, mask = shifted_token_losses(logits, labels)
    owner = sample_index[:, 1:]
    out = {}
    for n in owner[mask].unique().tolist():
        sel = mask & (owner == n)
        out[int(n)] = float(losses[sel].sum() / sel.sum())
    return out
