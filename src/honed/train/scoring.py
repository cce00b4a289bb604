"""Per-sample losses of a model on tokenized samples: the scoring pass of curriculum (measure=loss)
and hard-sample mining.

Samples are scored one per row (no packing), so a sample's loss never depends on what it was
packed with, and in eval mode, so no dropout draw touches the RNG a resumed run must reproduce.

>>> losses = score_samples(model, samples, device=torch.device("cpu"), pad_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from honed.train.losses import sample_loss_sums
from honed.utils.precision import autocast_dtype


def score_samples(model, samples, *, device, pad_id: int, batch_size: int = 8, precision: str = "fp32") -> list[float]:
    """Mean trained-token loss of every sample, in the order given (0.0 for a sample with no trained token)."""
    was_training = model.training
    model.eval()
    dtype = autocast_dtype(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else None
    try:
        sums = sample_loss_sums(model, samples, device=device, pad_id=pad_id, batch_size=batch_size, autocast=autocast)
    finally:
        model.train(was_training)
    return [total / count if count else 0.0 for total, count in sums]


def score_with_model(model_cfg, samples, *, device: str = "auto", batch_size: int = 8) -> list[float]:
    """Load a model (a honed ModelConfig), score the samples, free it: difficulty before training starts
    (what `make_epoch_data` is given for `data.sampling.curriculum.measure: loss`)."""
    from honed.model.load import load_model, pick_device

    dev = pick_device(device)
    model, _ = load_model(model_cfg, device=dev, for_training=False)
    try:
        pad = getattr(model.config, "pad_token_id", None)
        return score_samples(model, samples, device=dev, pad_id=pad if pad is not None else 0, batch_size=batch_size)
    finally:
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
