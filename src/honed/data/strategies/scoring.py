"""Per-sample losses of a model on tokenized samples: the scoring pass of curriculum (measure=loss)
and hard-sample mining.

Samples are scored one per row (no packing), so a sample's loss never depends on what it was
packed with, and in eval mode, so no dropout draw touches the RNG a resumed run must reproduce.

>>> losses = score_samples(model, samples, device=torch.device("cpu"), pad_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib

import torch


@torch.no_grad()
def score_samples(model, samples, *, device, pad_id: int, batch_size: int = 8, precision: str = "fp32") -> list[float]:
    """Mean trained-token loss of every sample, in the order given (0.0 for a sample with no trained token)."""
    from honed.data.packing import collate_padded
    from honed.train.losses import model_logits, per_sample_losses

    was_training = model.training
    model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    # Similar lengths together: less padding, and the result is put back in the given order.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    losses = [0.0] * len(samples)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate_padded([samples[i] for i in chunk], pad_id=pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                per = per_sample_losses(model_logits(model, batch), batch["labels"], batch["sample_index"])
            for k, i in enumerate(chunk):
                losses[i] = per.get(k, 0.0)
    finally:
        model.train(was_training)
    return losses


def score_with_model(model_cfg, samples, *, device: str = "auto", batch_size: int = 8) -> list[float]:
    """Load a model (a honed ModelConfig), score the samples, free it: difficulty before training starts."""
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
