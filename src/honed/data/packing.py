"""Batches: packed (padding-free) or padded, and the order they come in.

Packing puts several samples end to end in one row. Two things keep samples apart:
- `position_ids` restart at 0 for each sample; with no attention mask, transformers builds a
  block-diagonal causal mask from them (sdpa/eager), and flash-attention uses them as varlen
  boundaries, so no token attends across samples;
- each sample's first label is -100, so the last token of one sample is never trained to predict
  the first token of the next (the model shifts labels across the whole row).

>>> from honed.data.tokenize import TokenizedSample
>>> a = TokenizedSample([1, 2, 3], [-100, 2, 3], "a", False, 2)
>>> b = TokenizedSample([4, 5], [4, 5], "b", False, 2)
>>> batch = collate_packed([a, b])
>>> batch["position_ids"].tolist(), batch["labels"].tolist()
([[0, 1, 2, 0, 1]], [[-100, 2, 3, -100, 5]])
"""

from __future__ import annotations

import random

import torch

IGNORE = -100


def plan_batches(lengths: list[int], *, batch_size: int, max_seq_length: int, packing: bool, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Split sample indices into micro-batches, in a seeded order that depends only on (seed, epoch).

    Packed: greedy fill, in shuffled order, of a token budget of `batch_size × max_seq_length`.
    Padded: `batch_size` samples per batch.
    The same arguments always give the same plan, which is what makes resuming exact.
    """
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    batches: list[list[int]] = []
    if not packing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    budget = batch_size * max_seq_length
    current, used = [], 0
    for idx in order:
        if current and used + lengths[idx] > budget:
            batches.append(current)
            current, used = [], 0
        current.append(idx)
        used += lengths[idx]
    if current:
        batches.append(current)
    return batches


def collate_packed(samples) -> dict[str, torch.Tensor]:
    """One padding-free row of shape [1, total_tokens] with per-sample positions and a sample index."""
    ids, labels, positions, sample_index = [], [], [], []
    for n, s in enumerate(samples):
        ids += s.input_ids
        labels += [IGNORE] + s.labels[1:]
        positions += range(len(s.input_ids))
        sample_index += [n] * len(s.input_ids)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "sample_index": torch.tensor([sample_index], dtype=torch.long),
    }


def collate_padded(samples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with an attention mask (the path for `packing: false`)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    sample_index = torch.full((len(samples), width), -1, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
        sample_index[row, :n] = row
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "sample_index": sample_index}


def collate(samples, *, packing: bool, pad_id: int) -> dict[str, torch.Tensor]:
    return collate_packed(samples) if packing else collate_padded(samples, pad_id)
