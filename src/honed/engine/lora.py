"""Fused LoRA linear: frozen W and the low-rank update in one autograd node.

y = x Wᵀ + s · (x Aᵀ) Bᵀ, with a hand-derived backward that keeps only x (which the base matmul
needs anyway), the small x Aᵀ (N × r) and the compute-dtype copies of A and B:

    dB = s · dyᵀ (x Aᵀ)      dA = (s · dy B)ᵀ x      dx = dy W + (s · dy B) A

peft's path runs the base layer and the adapter as separate modules; under autocast its fp32
adapter weights make it cast and keep extra copies of x. Here everything runs in the compute dtype
(bf16 on a GPU), the adapter's gradients come back in fp32 for the fp32 master weights, and a
4-bit (NF4) base weight is dequantised on the fly in forward and again in backward (one Triton kernel,
`engine.nf4`), never stored.
An fp8 base (`training.precision: fp8`, `engine.fp8`) runs both of its matmuls, x Wᵀ and dy W, on fp8
tensor cores.

>>> import torch
>>> x, w = torch.randn(3, 8), torch.randn(5, 8)
>>> a, b = torch.randn(2, 8), torch.randn(5, 2)
>>> torch.allclose(lora_linear(x, w, a, b, 0.5), reference_lora_linear(x, w, a, b, 0.5), atol=1e-5)
True
"""

from __future__ import annotations

import types

import torch

from honed.engine import derived, nf4, replay
from honed.engine.fp8 import FP8_DTYPE, dequantize_weight, fp8_dgrad, fp8_linear, fp8_weight_scale
from honed.engine.layout import GROUP_ATTR, fusable
from honed.engine.replay import NOT_NEEDED
from honed.utils.precision import compute_dtype_of


def reference_lora_linear(x, weight, lora_a, lora_b, scale, bias=None):
    """Plain torch, the way peft computes it (no dropout)."""
    y = x @ weight.t() + scale * ((x @ lora_a.t()) @ lora_b.t())
    return y if bias is None else y + bias


def dequantize_base(weight_param, dtype):
    """A bf16/fp16/fp32 or NF4 (bitsandbytes Params4bit) base weight as a dense matrix of `dtype`."""
    if weight_param.dtype == FP8_DTYPE:  # reached only without its scale (fp8 bases go through engine.fp8): a clear error
        return dequantize_weight(weight_param, None, dtype)
    quant_state = getattr(weight_param, "quant_state", None)
    if quant_state is None:
        return weight_param if weight_param.dtype == dtype else weight_param.to(dtype)
    if nf4.fusable(weight_param.data, quant_state):
        return nf4.dequantize_nf4(weight_param.data, quant_state).to(dtype)
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight_param.data, quant_state).to(dtype)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scale, bias, fp8_scale, given):
        dtype = x.dtype
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2 @ a.t()
        # The compute-dtype copies of A and B go to backward as they are: casting the fp32 masters again
        # there is two more kernels per node, and a recomputed layer runs many nodes (engine.replay).
        # Where activations are kept, that is r·(in + out) more values per projection until backward
        # (84 MB for an 8B model at r=16), within the memory plan's calibration margin.
        ctx.save_for_backward(x2, xa, a, b)
        ctx.weight, ctx.fp8_scale, ctx.scale, ctx.has_bias = weight, fp8_scale, scale, bias is not None
        ctx.grad_dtypes = lora_a.dtype, lora_b.dtype
        ctx.bias_grad = bias is not None and ctx.needs_input_grad[5]
        ctx.bias_dtype = None if bias is None else bias.dtype
        if given is NOT_NEEDED:  # a rebuild that never reads this output (engine.replay): no matmul, no memory
            return x2.new_zeros(()).expand(*x.shape[:-1], lora_b.shape[0])
        if given is not None:  # the output of the first forward, handed back bit for bit
            y = given.reshape(x2.shape[0], -1).to(dtype, copy=True)
        elif fp8_scale is not None:  # fp8 base: the base matmul on fp8 tensor cores, no dense copy of W
            y = fp8_linear(x2, weight, fp8_scale, bias)
        else:
            w = dequantize_base(weight, dtype)
            y = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
        if given is None:
            y.addmm_(xa, b.t(), alpha=scale)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, xa, a, b = ctx.saved_tensors
        dtype = x2.dtype
        a_dtype, b_dtype = ctx.grad_dtypes
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        s = ctx.scale
        dxa = (dy2 @ b) * s  # (N, r)
        grad_b = (dy2.t() @ xa).mul_(s).to(b_dtype) if ctx.needs_input_grad[3] else None
        grad_a = (dxa.t() @ x2).to(a_dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.fp8_scale is not None:
                base_dx = fp8_dgrad(dy2, ctx.weight, ctx.fp8_scale)
            else:
                base_dx = dy2 @ dequantize_base(ctx.weight, dtype)
            grad_x = base_dx.addmm_(dxa, a).view(*dy.shape[:-1], x2.shape[-1])
        grad_bias = dy2.sum(0).to(ctx.bias_dtype) if ctx.bias_grad else None
        return grad_x, None, grad_a, grad_b, None, grad_bias, None, None


def lora_linear(x, weight, lora_a, lora_b, scale, bias=None, fp8_scale=None, given=None):
    """Fused forward/backward of a frozen linear plus a LoRA update (see module docstring).

    `fp8_scale`: the per-output-channel scale of a float8 e4m3 `weight` (`engine.fp8`), else None.
    `given`: in a recomputed layer's rebuild (`engine.replay`), the output this node computed in the
    first forward (returned instead of recomputed), or NOT_NEEDED when nothing reads the output (zeros
    are returned); the backward is the same either way, since it needs only x and x·Aᵀ."""
    return _LoraLinear.apply(x, weight, lora_a, lora_b, float(scale), bias, fp8_scale, given)


def fused_adapter(module, args=(), kwargs=None) -> str | None:
    """The adapter the fused node computes for this call of a patched projection, or None where
    peft's own forward must run (adapters off or merged, several active, extra arguments)."""
    if module.disable_adapters or module.merged or args or kwargs or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    return name if name in module.lora_A else None


def _fused_forward(self, x, *args, **kwargs):
    """Replaces peft's lora.Linear.forward where the fused node computes the same thing."""
    name = fused_adapter(self, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    group = getattr(self, GROUP_ATTR, None)
    if group is not None:  # q/k/v or gate/up run as one node (engine.grouped)
        y = group.output(self, x, name)
        if y is not None:
            return y
    base = self.base_layer
    dtype = compute_dtype_of(x)
    y = lora_linear(derived.cast(x, dtype), base.weight, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], base.bias,
                    fp8_weight_scale(base), replay.output_for(self))
    replay.offer_output(self, y)
    return y


def count_unfusable_lora_layers(model) -> int:
    """peft LoRA Linear layers the fused node cannot take (dropout, DoRA, a trainable base): they still
    train correctly, through peft's own forward, only slower."""
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return 0
    return sum(1 for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer") and not fusable(m))


def patch_lora_layers(model) -> int:
    """Route every fusable LoRA projection through the fused node; returns how many were patched."""
    n = 0
    for module in model.modules():
        if fusable(module):
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n
