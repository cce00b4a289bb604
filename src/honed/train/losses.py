"""Per-sample losses for scoring and evaluation (the token losses themselves: honed.model.lm_loss)."""

from __future__ import annotations

import contextlib

import torch

from honed.model.lm_loss import model_logits, shifted_token_losses


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
