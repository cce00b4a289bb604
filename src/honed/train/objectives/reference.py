"""Reference log-probs: with the LoRA adapter switched off (no second model), or computed once and cached.

The cache is `OUTPUT/reference_logps.safetensors`: one (n, 2) float32 tensor per split (each item's
two sequences: chosen/rejected, or a KTO sample and its mismatched sequence), and in its metadata
a key over the data fingerprint, the model and the objective. A resumed run reuses it; a changed
key means other data or another model, and the cache is computed again (or refused when the
weights have already moved, as in a resumed full fine-tune).

>>> cache_key("abc", "tiny-model", "dpo") == cache_key("abc", "tiny-model", "dpo")
True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from honed.data.preference_batch import collate_pairs, sequence_logps
from honed.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_FILE = "reference_logps.safetensors"


def cache_key(fingerprint: str, model_name: str, objective: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{model_name}\n{objective}".encode()).hexdigest()


def load_cache(path: Path, key: str, sizes: dict[str, int]) -> dict[str, torch.Tensor] | None:
    """The cached tensors when the file exists, its key matches and every split has the expected size; else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        if (fh.metadata() or {}).get("key") != key:
            log.info("reference cache %s is for other data or another model: not used", path)
            return None
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if any(tensors.get(split) is None or len(tensors[split]) != n for split, n in sizes.items() if n):
        return None
    return tensors


def save_cache(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically (temp file, then rename): a run killed mid-write leaves no half cache."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items() if v.numel()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)


@torch.no_grad()
def compute_logps(items: list, token_logps: Callable, *, device, pad_id: int, padding_free: bool, batch_size: int,
                  autocast=None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Summed log-probs of both sequences of every item under the model as it is now: (len(items), 2) float32."""
    out = torch.zeros(len(items), 2, dtype=torch.float32)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate_pairs([[x] for x in chunk], pad_id=pad_id, packing=True, padding_free=padding_free)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast if autocast is not None else contextlib.nullcontext():
            sums, _ = sequence_logps(token_logps(batch), batch, 2 * len(chunk))
        out[start : start + len(chunk)] = sums.float().view(-1, 2).cpu()
        if progress is not None:
            progress(len(chunk))
    return out


def attach(items: list, values: torch.Tensor) -> None:
    """Give each item its two reference log-probs (collate_pairs then puts them in the batch)."""
    for item, (a, b) in zip(items, values.tolist()):
        item.ref_logps = (a, b)


def prepare_cache(splits: dict[str, list], *, path: Path, key: str, compute: Callable[[list], torch.Tensor], weights_moved: bool) -> bool:
    """Attach cached reference log-probs to every split's items, computing (and saving) them when missing.

    `weights_moved`: the model is no longer the starting model (a resumed full fine-tune), so a
    missing cache cannot be recomputed. Returns True when the cache was computed now."""
    sizes = {name: len(items) for name, items in splits.items()}
    cached = load_cache(path, key, sizes)
    computed = cached is None
    if computed:
        if weights_moved:
            raise ConfigError(f"preference.reference: cache: {path} is missing or was made for other data, and this resumed run's "
                              "weights are no longer the starting model's; start the run again (or restore the file)")
        log.info("reference log-probs: computing them once for %s", ", ".join(f"{n} {s}" for s, n in sizes.items()))
        cached = {name: compute(items) if items else torch.zeros(0, 2) for name, items in splits.items()}
        save_cache(path, key, cached)
    for name, items in splits.items():
        if items:
            attach(items, cached[name])
    return computed
