"""What the training engine needs to know about a run, resolved once from the config.

>>> resolve_precision("auto", torch.device("cpu"))
'fp32'
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


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
