"""`training.precision: fp8`: the frozen base weights of LoRA projections stored and multiplied in fp8.

Each fusable LoRA projection's frozen base weight W (out × in) is stored as float8 e4m3 with one fp32
scale per output channel (its row's amax / 448), half the bytes of bf16. Both matmuls with W run on fp8
tensor cores (`torch._scaled_mm`, rowwise scales, bf16 output):

- forward, y = x Wᵀ: the input rows are quantised to e4m3 with their own scale, every call;
- backward, dx = dy W (the base is frozen, so that is all it needs): W's per-output-channel scale
  lies along the contracted axis there, where `_scaled_mm` takes no scale, so it is folded into dy
  first and the rows of dy·scale are quantised like x's. `_scaled_mm` wants W as a column-major
  (out × in) operand, which is Wᵀ laid out row-major: a transposed fp8 copy, made per call and
  dropped after it (a quarter of the bf16 weight's bytes, for one projection at a time).

The LoRA A/B matmuls and the adapter's gradients compute in bf16 from the unrounded x and dy: only
the dx handed down to earlier layers carries dy's e4m3 rounding, as in rowwise fp8 training recipes.
`HONED_FP8_BACKWARD=0` runs dx in bf16 instead, from W dequantised (to measure what fp8 dx costs in
accuracy or gains in speed). CUDA GPUs of compute capability 8.9 or newer (Ada, Hopper, Blackwell)
only; anywhere else the same math runs in plain torch (`reference_fp8_linear`, `reference_fp8_dgrad`),
for tests.

Training only: the saved adapter is peft's (LoRA weights only) and applies to the original bf16 base;
merging an adapter into fp8 bases is refused, since it would bake fp8 rounding into the merged model.

>>> w = torch.randn(32, 16)
>>> w_fp8, scale = quantize_weight_rowwise(w)
>>> w_fp8.dtype, tuple(scale.shape)
(torch.float8_e4m3fn, (32,))
>>> error = (dequantize_weight(w_fp8, scale, torch.float32) - w).abs()
>>> bool((error <= w.abs() / 16 + scale[:, None] / 2**9).all())  # half an e4m3 step: 2^-4 relative
True
"""

from __future__ import annotations

import logging
import os
import types

import torch

from honed.engine.compile import on_cuda_compiled
from honed.engine.layout import covers, fusable
from honed.errors import ConfigError, ModelError
from honed.utils.precision import compute_dtype_of

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_NAME = "fp8_weight_scale"  # buffer on the base nn.Linear: (out,) fp32, W ≈ W_fp8 · scale[:, None]
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x, 12.x)
# cuBLAS "fast accumulation" skips the periodic promotion of Hopper's fp8 accumulators to fp32: a few
# percent faster, less exact on long dot products. Off: loss parity with bf16 comes first.
FAST_ACCUM = False
_EPS = 1e-12  # an all-zero row gets a tiny scale instead of a division by zero
FP8_BACKWARD = os.environ.get("HONED_FP8_BACKWARD", "1") != "0"  # dx = dy W on fp8 tensor cores (module docstring)


def _rowwise_quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of a 2-D tensor as e4m3 with its own fp32 scale (amax / 448), shape (rows, 1)."""
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp_min(_EPS) / E4M3_MAX
    # The clamp keeps float rounding of amax/scale from landing past 448 (e4m3 has no infinity).
    return (t.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE), scale


def quantize_weight_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (out × in) as e4m3 and one fp32 scale per output channel, shape (out,).

    >>> w_fp8, scale = quantize_weight_rowwise(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
    >>> (scale * E4M3_MAX).tolist()  # each row's amax
    [2.0, 0.5]
    """
    w_fp8, scale = _rowwise_quantize(weight.detach())
    return w_fp8, scale.squeeze(1)


def _rowwise_quantize_scaled_columns(t: torch.Tensor, column_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of t · column_scale (one factor per column) quantised as `_rowwise_quantize` does."""
    return _rowwise_quantize(t.float() * column_scale)


def _dequantize_weight_math(w_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (w_fp8.float() * scale[:, None]).to(dtype)  # the product in fp32, so only the final cast rounds


# Activations and gradients are quantised every call, and a weight dequantised at every bf16 backward: on
# a GPU each becomes one or two fused kernels, where eager torch would write fp32 copies of the whole tensor.
_rowwise_quantize_compiled = on_cuda_compiled(_rowwise_quantize)
_quantize_scaled_columns_compiled = on_cuda_compiled(_rowwise_quantize_scaled_columns)
_dequantize_weight_compiled = on_cuda_compiled(_dequantize_weight_math)


def _transposed_copy(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()


# torch's own copy moves a transposed fp8 matrix one byte at a time through strided reads (about a
# tenth of the memory bandwidth on an H100: 48 ms a step for llama-8b); Inductor's copy goes by tiles.
_transposed_copy_compiled = on_cuda_compiled(_transposed_copy)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (rows × in) as e4m3, one fp32 scale per row, shape (rows, 1).

    >>> x_fp8, scale = quantize_rows(torch.randn(5, 16))
    >>> x_fp8.dtype, tuple(scale.shape)
    (torch.float8_e4m3fn, (5, 1))
    """
    return _rowwise_quantize_compiled(x)


def dequantize_weight(w_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W ≈ W_fp8 · scale, in `dtype` (the product in fp32, so only the final cast rounds)."""
    _check_fp8_weight(w_fp8, scale)
    return _dequantize_weight_compiled(w_fp8, scale, dtype)


def _check_fp8_weight(w_fp8, scale) -> None:
    # A weight cast away from fp8 (e.g. by model.to(dtype)) next to its scale would compute garbage quietly.
    if w_fp8.dtype != FP8_DTYPE or scale is None:
        raise ModelError(
            f"an fp8 base weight lost its pairing (dtype {w_fp8.dtype}, scale {'missing' if scale is None else 'present'}): "
            "the model was cast or edited after training.precision=fp8 converted it; convert again, or use training.precision: bf16"
        )


def reference_fp8_linear(x, w_fp8, scale, bias=None):
    """Plain torch, fp32 math: x quantised per row to e4m3 (as the fast path does), W dequantised."""
    with torch.autocast(x.device.type, enabled=False):  # fp32 math even when called under autocast
        x_fp8, x_scale = _rowwise_quantize(x)
        y = (x_fp8.float() * x_scale) @ dequantize_weight(w_fp8, scale, torch.float32).t()
        return y if bias is None else y + bias.float()


def fp8_linear(x2, w_fp8, scale, bias=None):
    """y = x Wᵀ (+ bias) for x (rows × in) and an fp8 weight: fp8 tensor cores on CUDA, output in x's dtype.

    `torch._scaled_mm` takes the left operand row-major and the right one column-major, which
    `w_fp8.t()` of the row-major (out × in) weight is without a copy; rowwise scales are (rows, 1)
    for x and (1, out) for W, fp32 and contiguous; in and out must be multiples of 16 (checked
    when the weight is converted); with rowwise scales the output is bf16.
    """
    _check_fp8_weight(w_fp8, scale)
    if not x2.is_cuda:
        return reference_fp8_linear(x2, w_fp8, scale, bias).to(x2.dtype)
    x_fp8, x_scale = quantize_rows(x2.contiguous())
    y = torch._scaled_mm(
        x_fp8, w_fp8.t(), scale_a=x_scale, scale_b=scale.view(1, -1),
        bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUM,
    )
    return y if x2.dtype == torch.bfloat16 else y.to(x2.dtype)


def reference_fp8_dgrad(dy, w_fp8, scale):
    """Plain torch, fp32 math: dx = dy W with the rows of dy·scale quantised to e4m3 (as the fast path does)."""
    with torch.autocast(dy.device.type, enabled=False):
        g_fp8, g_scale = _rowwise_quantize_scaled_columns(dy, scale)
        return (g_fp8.float() * g_scale) @ w_fp8.float()


_unit_scales: dict[tuple[torch.device, int], torch.Tensor] = {}


def fp8_dgrad(dy2, w_fp8, scale):
    """dx = dy W for dy (rows × out) and a frozen fp8 weight W ≈ W_fp8 · scale[:, None] (out × in).

    On CUDA: W's scale is folded into dy and dy's rows quantised (one fused pass), then
    `torch._scaled_mm(dy_fp8, Wᵀ-row-major viewed as column-major W, …)` with dy's row scales and unit
    column scales; in bf16 from W dequantised when `FP8_BACKWARD` is off; elsewhere `reference_fp8_dgrad`.
    The result has dy's dtype."""
    _check_fp8_weight(w_fp8, scale)
    if not dy2.is_cuda:
        return reference_fp8_dgrad(dy2, w_fp8, scale).to(dy2.dtype)
    if not FP8_BACKWARD:
        return dy2 @ dequantize_weight(w_fp8, scale, dy2.dtype)
    g_fp8, g_scale = _quantize_scaled_columns_compiled(dy2.contiguous(), scale)
    key = (dy2.device, w_fp8.shape[1])
    ones = _unit_scales.get(key)
    if ones is None:
        ones = _unit_scales[key] = torch.ones(1, w_fp8.shape[1], device=dy2.device, dtype=torch.float32)
    w_columns = _transposed_copy_compiled(w_fp8).t()  # (out × in), column-major: the transposed copy lives for this call only
    dx = torch._scaled_mm(g_fp8, w_columns, scale_a=g_scale, scale_b=ones, out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUM)
    return dx if dy2.dtype == torch.bfloat16 else dx.to(dy2.dtype)


class _Fp8FrozenLinear(torch.autograd.Function):
    """x → x Wᵀ + bias over a frozen fp8 W; backward dx = dy W, also in fp8 (`fp8_dgrad`)."""

    @staticmethod
    def forward(ctx, x2, w_fp8, scale, bias):
        ctx.w_fp8, ctx.scale = w_fp8, scale
        return fp8_linear(x2, w_fp8, scale, bias)

    @staticmethod
    def backward(ctx, dy):
        return fp8_dgrad(dy, ctx.w_fp8, ctx.scale), None, None, None


def _fp8_base_forward(self, x):
    """The base nn.Linear's forward once its weight is fp8. The fused LoRA node never calls it; peft's
    own forward does (adapters disabled, several adapters active), and nn.Linear's would be wrong there:
    autocast would cast the raw e4m3 values to bf16 without their scale."""
    y = _Fp8FrozenLinear.apply(x.reshape(-1, x.shape[-1]).to(compute_dtype_of(x)), self.weight, getattr(self, SCALE_NAME), self.bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def _refuse_merge(self, *args, **kwargs):
    raise ModelError(
        "this model's frozen base weights are stored in fp8 (training.precision=fp8, training only); merging the adapter "
        "into them would bake fp8 rounding into the merged model. Load the base model in bf16, attach the saved adapter "
        "(it applies to the bf16 base) and merge that."
    )


def fp8_weight_scale(linear) -> torch.Tensor | None:
    """The per-channel scale of a base nn.Linear whose weight is stored in fp8, else None."""
    return getattr(linear, SCALE_NAME, None)


def _float_linear(base) -> bool:
    """An nn.Linear whose weight is bf16/fp16/fp32 (not already quantised)."""
    return isinstance(base, torch.nn.Linear) and base.weight.dtype in (torch.bfloat16, torch.float16, torch.float32)


def _scaled_mm_fits(base) -> bool:
    """`torch._scaled_mm` needs in and out features that are multiples of 16."""
    return base.in_features % 16 == 0 and base.out_features % 16 == 0


def storable_in_fp8(module) -> bool:
    """A fusable LoRA projection whose base `convert_lora_bases_to_fp8` would store in fp8 now (not yet converted)."""
    if not fusable(module):
        return False
    base = module.base_layer
    return fp8_weight_scale(base) is None and _float_linear(base) and _scaled_mm_fits(base)


def convert_lora_bases_to_fp8(model) -> int:
    """Store each fusable LoRA layer's frozen base weight as e4m3 + per-channel scale; returns how many.

    The module tree stays what peft expects: the base nn.Linear keeps its place and its `weight`
    (now an fp8 Parameter, frozen), gains the `fp8_weight_scale` buffer, and its forward computes
    with both. Bases that are already quantised (NF4), trainable, or whose in/out features are not
    multiples of 16 (`torch._scaled_mm` needs that) stay as they are.

    >>> n = convert_lora_bases_to_fp8(peft_model)  # doctest: +SKIP
    """
    converted, skipped = 0, 0
    for module in model.modules():
        if not fusable(module):
            continue
        base = module.base_layer
        if fp8_weight_scale(base) is not None:
            converted += 1  # converted before (prepare called twice)
            continue
        w = base.weight
        if not _float_linear(base):
            continue  # e.g. an NF4 base (bitsandbytes stores it as uint8): already 4-bit
        if not _scaled_mm_fits(base):
            skipped += 1
            continue
        with torch.no_grad():
            w_fp8, scale = quantize_weight_rowwise(w)
        base.weight = torch.nn.Parameter(w_fp8, requires_grad=False)  # the old Parameter (bf16) is freed
        base.register_buffer(SCALE_NAME, scale, persistent=False)
        base.forward = types.MethodType(_fp8_base_forward, base)
        module.merge = types.MethodType(_refuse_merge, module)
        converted += 1
    if skipped:
        log.info("fp8: %d LoRA base projections stay in their dtype (in/out features not multiples of 16)", skipped)
    return converted


def fp8_device_problem(device: torch.device) -> str | None:
    """None when `device` has fp8 tensor cores that `torch._scaled_mm` can use, else why not."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"fp8 matmuls need a CUDA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer; this run is on {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (
            f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}; fp8 matmuls need "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (L4/L40/RTX 4090, H100/H200, B200)"
        )
    return None


def check_fp8_device(device: torch.device) -> None:
    """Raise a ConfigError naming `training.precision` when fp8 cannot run on `device`."""
    problem = fp8_device_problem(device)
    if problem:
        raise ConfigError(f"training.precision=fp8: {problem}. Use training.precision: bf16 (or auto) on this machine.")


def prepare_fp8(model, settings) -> int:
    """On the fused path, after `patch_lora_layers`: when `training.precision` is fp8, check the device,
    convert the LoRA bases and hand the freed bf16 memory back; returns how many were converted (0 when
    precision is not fp8). method lora and the fused engine are checked when the config is validated.

    >>> n_fp8 = prepare_fp8(model, resolve_engine_settings(cfg, torch.device("cuda")))  # doctest: +SKIP
    """
    if not settings.fp8:
        return 0
    device = settings.device
    check_fp8_device(device)  # settings made by hand (tests, bench) were not resolved
    before = _frozen_base_bytes(model)
    n = convert_lora_bases_to_fp8(model)
    if n == 0:
        raise ConfigError(
            "training.precision=fp8: no LoRA projection of this model has a bf16/fp16/fp32 base weight to store in fp8 "
            "(an already 4-bit checkpoint, or lora.target_modules matched no linear layer); use training.precision: bf16"
        )
    if device.type == "cuda":
        torch.cuda.empty_cache()  # so the memory plan that follows sees the bf16 copies' memory as free
    log.info("fp8: %d LoRA base projections stored in float8 e4m3 (%.2f → %.2f GiB)", n, before / 2**30, _frozen_base_bytes(model) / 2**30)
    return n


def _frozen_base_bytes(model) -> int:
    total = 0
    for module in model.modules():
        if fusable(module):
            base = module.base_layer
            scale = fp8_weight_scale(base)
            total += base.weight.numel() * base.weight.element_size() + (0 if scale is None else scale.numel() * scale.element_size())
    return total


def refuse_fp8_off_the_fused_path(model, settings):
    """A training-path factory registered after the fused one: reached with precision fp8 only when the
    fused path declined the model, which would otherwise train in bf16 under an fp8 label."""
    if not settings.fp8:
        return None
    reason = fp8_device_problem(settings.device) or covers(model) or "the fused path declined it"
    raise ConfigError(f"training.precision=fp8 runs only on honed's fused path, which cannot take this run ({reason}); use training.precision: bf16")
