"""Batches: packed rows or padded samples, and the seeded order they come in.

A micro-batch is a list of rows; a row is a list of samples. Packing fills each row with several
samples end to end, up to `max_seq_length` tokens. Two things keep samples apart:
- `position_ids` restart at 0 for each sample; with no attention mask, transformers builds a
  block-diagonal causal mask from them (sdpa/eager), and flash-attention uses them as varlen
  boundaries, so no token attends across samples;
- each sample's first label is -100, so the last token of one sample is never trained to predict
  the first token of the next (the model shifts labels across the whole row).

Rows of a micro-batch are padded to the longest; the padding is one more "sample" (own positions,
no labels). With `padding_free=True` all rows are joined into one row with no padding at all,
which is what varlen (flash) attention wants; a dense attention mask would cost (B·L)² instead
of B·L², so that is not the default. Unpacked samples (`packing: false`) join the same way when
padding-free: one row, each sample its own segment.

>>> from honed.data.tokenize import TokenizedSample
>>> a = TokenizedSample([1, 2, 3], [-100, 2, 3], "a", False, 2)
>>> b = TokenizedSample([4, 5], [4, 5], "b", False, 2)
>>> batch = collate_packed([[a, b]])
>>> batch["position_ids"].tolist(), batch["labels"].tolist()
([[0, 1, 2, 0, 1]], [[-100, 2, 3, -100, 5]])
"""

from __future__ import annotations

import torch

IGNORE = -100


def pack_rows(order: list[int], lengths: list[int], max_seq_length: int) -> list[list[int]]:
    """Greedy fill, in the given order: a sample that does not fit starts a new row."""
    rows: list[list[int]] = []
    current, used = [], 0
    for idx in order:
        if current and used + lengths[idx] > max_seq_length:
            rows.append(current)
            current, used = [], 0
        current.append(idx)
        used += lengths[idx]
    if current:
        rows.append(current)
    return rows


def plan_batches(lengths: list[int], *, batch_size: int, max_seq_length: int, packing: bool, order: list[int] | None = None) -> list[list[list[int]]]:
    """Micro-batches of `batch_size` rows of sample indices, taken in `order` (default: as given).

    The same arguments always give the same plan, which is what makes resuming exact.
    """
    order = list(range(len(lengths))) if order is None else order
    rows = pack_rows(order, lengths, max_seq_length) if packing else [[i] for i in order]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def collate_packed(rows, *, pad_id: int = 0, padding_free: bool = False) -> dict[str, torch.Tensor]:
    """Packed rows → input_ids, labels, position_ids and a per-token sample index (-1 = padding)."""
    if padding_free:
        rows = [[s for row in rows for s in row]]
    built, n = [], 0
    for row in rows:
        ids, labels, positions, owner = [], [], [], []
        for s in row:
            ids += s.input_ids
            labels += [IGNORE] + s.labels[1:]
            positions += range(len(s.input_ids))
            owner += [n] * len(s.input_ids)
            n += 1
        built.append((ids, labels, positions, owner))
    width = max(len(ids) for ids, *_ in built)
    out = {k: torch.empty((len(built), width), dtype=torch.long) for k in ("input_ids", "labels", "position_ids", "sample_index")}
    for r, (ids, labels, positions, owner) in enumerate(built):
        pad = width - len(ids)
        out["input_ids"][r] = torch.tensor(ids + [pad_id] * pad)
        out["labels"][r] = torch.tensor(labels + [IGNORE] * pad)
        out["position_ids"][r] = torch.tensor(list(positions) + list(range(pad)))
        out["sample_index"][r] = torch.tensor(owner + [-1] * pad)
    return out


def collate_padded(samples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of single samples with an attention mask (the path for `packing: false`)."""
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


def collate(rows, *, packing: bool, pad_id: int, padding_free: bool = False) -> dict[str, torch.Tensor]:
    """A planned micro-batch (rows of samples) → model inputs.

    Padding-free, unpacked samples are joined like packed ones: the same tokens and targets as the
    padded batch, since each sample's first label, set to -100 here, was never a target there either
    (a row's first label is never a target once labels shift by one).
    """
    if packing or padding_free:
        return collate_packed(rows, pad_id=pad_id, padding_free=padding_free)
    return collate_padded([s for row in rows for s in row], pad_id)


def uses_varlen_attention(model) -> bool:
    """The model's attention takes packed sequences without padding (boundaries from positions):
    transformers' flash-attention kernels, or honed's varlen attention (`engine.attention`)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "flash" in impl or impl == "honed_varlen"  # engine.attention.VARLEN_ATTENTION (data does not import engine)
