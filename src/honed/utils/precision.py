"""What a run computes in: `training.precision` → autocast dtype, and the dtype a tensor computes in now.

>>> autocast_dtype("fp8"), autocast_dtype("fp32")
(torch.bfloat16, None)
>>> compute_dtype_of(torch.ones(1))
torch.float32
"""

from __future__ import annotations

import torch

# fp8 computes in bf16: only the frozen LoRA base weights are stored in fp8 (`engine.fp8`).
_AUTOCAST = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved `training.precision`; None for fp32 (no autocast)."""
    return _AUTOCAST.get(precision)


def compute_dtype_of(t: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on for `t`'s device, else `t`'s own dtype."""
    device_type = t.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else t.dtype


def autocast_context(precision: str, device: torch.device):
    """Mixed-precision compute for bf16/fp16, and bf16 for fp8 (only the frozen LoRA bases are fp8); nothing for fp32."""
    import contextlib

    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
