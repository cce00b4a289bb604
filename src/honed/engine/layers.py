"""RMSNorm and SwiGLU with hand-derived backwards that keep less than autograd would.

transformers' RMSNorm upcasts to fp32 and autograd keeps the fp32 input, the normalised fp32
tensor and the bf16 copy (about 10 bytes per element); here only the input and one fp32 scale
per row are kept and the rest is recomputed in backward. SwiGLU keeps gate and up (autograd
also keeps silu(gate)).

>>> import torch
>>> x, w = torch.randn(4, 8), torch.rand(8)
>>> torch.allclose(rms_norm(x, w, 1e-6), reference_rms_norm(x, w, 1e-6), atol=1e-6)
True
>>> g, u = torch.randn(4, 8), torch.randn(4, 8)
>>> torch.allclose(swiglu(g, u), reference_swiglu(g, u), atol=1e-6)
True
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from honed.engine.compile import on_cuda_compiled


def reference_rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm, as written there."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def reference_swiglu(gate, up):
    return F.silu(gate) * up


@on_cuda_compiled
def _rms_forward(x, weight, eps: float):
    h = x.float()
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (h * rstd).to(x.dtype), rstd


@on_cuda_compiled
def _rms_backward(dy, x, weight, rstd):
    xhat = x.float() * rstd
    g = dy.float() * weight.float()
    return (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)


@on_cuda_compiled
def _swiglu_backward(dh, gate, up):
    g = gate.float()
    sig = torch.sigmoid(g)
    dhf = dh.float()
    d_up = (dhf * g * sig).to(up.dtype)
    d_gate = (dhf * up.float() * sig * (1 + g * (1 - sig))).to(gate.dtype)
    return d_gate, d_up


@on_cuda_compiled
def _swiglu_forward(gate, up):
    return F.silu(gate) * up


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx = _rms_backward(dy, x, weight, rstd)
        dw = None
        if ctx.needs_input_grad[1]:
            xhat = (x.float() * rstd).to(x.dtype).float()
            dw = (dy.float() * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return dx, dw, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return _swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        return _swiglu_backward(dh, gate, up)


def rms_norm(x, weight, eps):
    return _RMSNorm.apply(x, weight, eps)


def swiglu(gate, up):
    return _SwiGLU.apply(gate, up)


def _norm_forward(self, x):
    return rms_norm(x, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def is_plain_rms_norm(module) -> bool:
    """Llama/Qwen/Mistral RMSNorm (weight * x̂); Gemma's (1 + weight) variant is not this."""
    name = type(module).__name__
    return name.endswith("RMSNorm") and not name.startswith("Gemma") and hasattr(module, "variance_epsilon") and hasattr(module, "weight")


def is_swiglu_mlp(module) -> bool:
    act = getattr(getattr(module, "config", None), "hidden_act", None)
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) and act in ("silu", "swish")


def patch_layers(model) -> tuple[int, int]:
    """Route RMSNorms and SwiGLU MLPs through the lean nodes; returns (norms, mlps) patched."""
    norms = mlps = 0
    for module in model.modules():
        if is_plain_rms_norm(module):
            module.forward = types.MethodType(_norm_forward, module)
            norms += 1
        elif is_swiglu_mlp(module):
            module.forward = types.MethodType(_mlp_forward, module)
            mlps += 1
    return norms, mlps
