"""NF4 dequantisation in one kernel: QLoRA's packed 4-bit base weights back to bf16 for a matmul.

A QLoRA base weight (bitsandbytes `Params4bit`) holds two 4-bit codes per byte, the first element in
the high nibble, and one scale ("absmax") per block of `blocksize` elements (64): element i is
`code[nibble_i] · absmax[i // blocksize]`. With double quantisation (`nested`, what QLoRA uses)
the absmax values are themselves 8-bit codes, one fp32 scale per 256 of them plus one offset:
`absmax[b] = code2[q[b]] · absmax2[b // 256] + offset`.

bitsandbytes dequantises that in three kernels (the absmax codes to fp32, the offset added, then
the weight), each behind its own Python and dispatcher layers. The fused path dequantises each
projection's weight in forward, again in a recomputed layer's rebuild (once per MLP chunk) and in
backward, hundreds of times a step for an 8B model, so the host time of those calls and the traffic
of the two absmax passes add up. `dequantize_nf4` does it in one Triton kernel that reads the
packed bytes and the 8-bit absmax codes and writes the weight once.

The result is bit for bit bitsandbytes': the same fp32 products, rounded to the output dtype the
same way (FMA contraction is off, so the absmax's multiply and add round separately, as they do in
bitsandbytes' two kernels). `HONED_TRITON_NF4=0` goes back to bitsandbytes' own call.

`reference_dequantize_nf4` is the same arithmetic in plain torch, for tests and for devices without
Triton.

>>> import types
>>> code = torch.linspace(-1, 1, 16)
>>> state = types.SimpleNamespace(code=code, absmax=torch.tensor([2.0]), blocksize=64, nested=False,
...                               shape=torch.Size([1, 4]), dtype=torch.float32, quant_type="nf4")
>>> packed = torch.tensor([[0x0F], [0x87]], dtype=torch.uint8)  # (0, 15) and (8, 7): high nibble first
>>> reference_dequantize_nf4(packed, state).tolist() == [[2 * code[0].item(), 2 * code[15].item(), 2 * code[8].item(), 2 * code[7].item()]]
True
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

ENABLED = os.environ.get("HONED_TRITON_NF4", "1") != "0"
_BYTES_PER_PROGRAM = 1024  # packed bytes per Triton program: 2,048 output elements


def reference_dequantize_nf4(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """bitsandbytes' 4-bit dequantisation as plain torch ops (module docstring)."""
    absmax = quant_state.absmax
    if quant_state.nested:
        inner = quant_state.state2
        blocks = torch.arange(absmax.numel(), device=absmax.device) // inner.blocksize
        absmax = inner.code.to(absmax.device)[absmax.long()] * inner.absmax[blocks]
        absmax = absmax + quant_state.offset  # a separate rounding, as in bitsandbytes
    flat = packed.reshape(-1)
    nibbles = torch.stack(((flat >> 4) & 0xF, flat & 0xF), dim=-1).reshape(-1).long()
    count = quant_state.shape.numel()
    elements = torch.arange(count, device=packed.device)
    values = quant_state.code.to(packed.device)[nibbles[:count]] * absmax.float()[elements // quant_state.blocksize]
    return values.to(quant_state.dtype).reshape(quant_state.shape)


def kernel_unavailable_reason() -> str | None:
    """Why NF4 weights on a CUDA device go to bitsandbytes' dequantisation instead of the kernel, or
    None when they take the kernel (the fused path logs it once)."""
    if not ENABLED:
        return "HONED_TRITON_NF4=0"
    if not _triton_installed():
        return "Triton is not installed"
    return None


def fusable(packed: torch.Tensor, quant_state) -> bool:
    """Whether `dequantize_nf4` takes this weight: NF4 on a CUDA device with Triton installed, packed as
    (bytes, 1) uint8, with an 8-bit nested absmax or none (anything else goes to bitsandbytes)."""
    if kernel_unavailable_reason() is not None:
        return False
    if not (packed.is_cuda and packed.dtype == torch.uint8 and packed.dim() == 2 and packed.shape[1] == 1):
        return False
    if quant_state.quant_type != "nf4" or quant_state.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if quant_state.nested:
        return quant_state.absmax.dtype == torch.uint8 and quant_state.state2.absmax.dtype == torch.float32
    return quant_state.absmax.dtype == torch.float32


def dequantize_nf4(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """The dense weight (quant_state.shape, quant_state.dtype) of a packed NF4 weight, in one kernel.
    Call only where `fusable` says so."""
    device = packed.device
    count = quant_state.shape.numel()
    n_bytes = (count + 1) // 2
    code = quant_state.code.to(device)
    nested = bool(quant_state.nested)
    if nested:
        inner = quant_state.state2
        absmax2, code2, inner_blocksize = inner.absmax, inner.code.to(device), inner.blocksize
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=device).reshape(1)
    else:  # the kernel reads none of these without NESTED; any tensor stands in
        absmax2 = code2 = offset = code
        inner_blocksize = 1
    out = torch.empty(quant_state.shape, dtype=quant_state.dtype, device=device)
    grid = (-(-n_bytes // _BYTES_PER_PROGRAM),)
    _kernel()[grid](packed, quant_state.absmax, absmax2, code2, offset, code, out, n_bytes, count,
                    BLOCKSIZE=quant_state.blocksize, INNER_BLOCKSIZE=inner_blocksize, NESTED=nested,
                    BYTES=_BYTES_PER_PROGRAM, num_warps=4, enable_fp_fusion=False)
    return out


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


_compiled = None


def _kernel():
    """The Triton kernel, defined on first use (Triton is imported only where there is a GPU)."""
    global _compiled
    if _compiled is not None:
        return _compiled
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_dequantize(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, out_ptr, n_bytes, count,
                       BLOCKSIZE: tl.constexpr, INNER_BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, BYTES: tl.constexpr):
        start = tl.program_id(0).to(tl.int64) * BYTES
        byte_index = start + tl.arange(0, BYTES)
        in_range = byte_index < n_bytes
        byte = tl.load(packed_ptr + byte_index, mask=in_range, other=0).to(tl.int32)
        block = byte_index // (BLOCKSIZE // 2)  # both elements of a byte share a block (BLOCKSIZE is even)
        if NESTED:
            q = tl.load(absmax_ptr + block, mask=in_range, other=0).to(tl.int32)
            scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // INNER_BLOCKSIZE, mask=in_range, other=0.0)
            scale = scale + tl.load(offset_ptr)
        else:
            scale = tl.load(absmax_ptr + block, mask=in_range, other=0.0)
        high = tl.load(code_ptr + (byte >> 4)) * scale
        low = tl.load(code_ptr + (byte & 0xF)) * scale
        values = tl.interleave(high, low).to(out_ptr.dtype.element_ty)
        out_index = 2 * start + tl.arange(0, 2 * BYTES)
        tl.store(out_ptr + out_index, values, mask=out_index < count)

    _compiled = nf4_dequantize
    return _compiled
