"""RMSNorm, SwiGLU and rotary embeddings with hand-derived backwards that keep less than autograd would.

transformers' RMSNorm upcasts to fp32 and autograd keeps the fp32 input, the normalised fp32
tensor and the bf16 copy (about 10 bytes per element); here only the input and one fp32 scale
per row are kept and the rest is recomputed in backward. SwiGLU keeps gate and up (autograd
also keeps silu(gate)). Rotary embeddings (RoPE) run as one pass over q and one over k, where
transformers' formula takes five (two products, a negation, a concatenation, a sum); the backward
is the rotation by the opposite angle and needs only cos and sin.

>>> import torch
>>> x, w = torch.randn(4, 8), torch.rand(8)
>>> torch.allclose(rms_norm(x, w, 1e-6), reference_rms_norm(x, w, 1e-6), atol=1e-6)
True
>>> g, u = torch.randn(4, 8), torch.randn(4, 8)
>>> torch.allclose(swiglu(g, u), reference_swiglu(g, u), atol=1e-6)
True
>>> q, k, cos, sin = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)
>>> all(torch.allclose(a, b, atol=1e-6) for a, b in zip(rope(q, k, cos, sin), reference_rope(q, k, cos, sin)))
True
"""

from __future__ import annotations

import functools
import sys
import types

import torch
import torch.nn.functional as F

from honed.engine import derived, replay
from honed.engine.compile import on_cuda_compiled
from honed.engine.layout import GROUP_ATTR, causal_lm_of


def reference_rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm, as written there."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def reference_swiglu(gate, up):
    return F.silu(gate) * up


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_rope(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' apply_rotary_pos_emb (Llama, Qwen2/3, Mistral), as written there."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


@on_cuda_compiled
def _rope_forward(x, cos, sin):
    out_dtype = torch.promote_types(x.dtype, cos.dtype)  # what x * cos gives in transformers' formula
    xf, c, s = x.float(), cos.float(), sin.float()
    return (xf * c + _rotate_half(xf) * s).to(out_dtype)


@on_cuda_compiled
def _rope_backward(dy, cos, sin):
    # y = x·cos + R(x)·sin with R(x) = (-x₂, x₁); Rᵀ = -R, so dx = dy·cos - R(dy·sin).
    g, c, s = dy.float(), cos.float(), sin.float()
    return g * c - _rotate_half(g * s)


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = q.dtype, k.dtype
        return _rope_forward(q, cos, sin), _rope_forward(k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        q_dtype, k_dtype = ctx.dtypes
        grad_q = _rope_backward(dq, cos, sin).to(q_dtype) if dq is not None and ctx.needs_input_grad[0] else None
        grad_k = _rope_backward(dk, cos, sin).to(k_dtype) if dk is not None and ctx.needs_input_grad[1] else None
        return grad_q, grad_k, None, None


def rope(q, k, cos, sin, unsqueeze_dim=1):
    """apply_rotary_pos_emb with one fused pass per tensor (see module docstring)."""
    if cos.requires_grad or sin.requires_grad:  # never so in these models; the plain formula covers it
        return reference_rope(q, k, cos, sin, unsqueeze_dim)
    return _RoPE.apply(q, k, cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim))


@on_cuda_compiled
def _rms_forward(x, weight, eps: float):
    h = x.float()
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (h * rstd).to(x.dtype), rstd


@on_cuda_compiled
def _rms_output(x, weight, rstd):
    # The forward's output again from what its node keeps (`engine.derived`): the same arithmetic as `_rms_forward`.
    return weight * (x.float() * rstd).to(x.dtype)


@on_cuda_compiled
def _rms_backward(dy, x, weight, rstd):
    xhat = x.float() * rstd
    g = dy.float() * weight.float()
    return (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)


def _swiglu_grads(dh, gate, up):
    g = gate.float()
    sig = torch.sigmoid(g)
    dhf = dh.float()
    d_up = (dhf * g * sig).to(up.dtype)
    d_gate = (dhf * up.float() * sig * (1 + g * (1 - sig))).to(gate.dtype)
    return d_gate, d_up


_swiglu_backward = on_cuda_compiled(_swiglu_grads)


@on_cuda_compiled
def _swiglu_forward(gate, up):
    return F.silu(gate) * up


@on_cuda_compiled
def _packed_swiglu_forward(gate_up, width: int):
    return F.silu(gate_up[..., :width]) * gate_up[..., width:]


@on_cuda_compiled
def _packed_swiglu_backward(dh, gate_up, width: int):
    # One output tensor, gate's gradient then up's: the joint gate/up node (engine.grouped) takes it as it is.
    return torch.cat(_swiglu_grads(dh, gate_up[..., :width], gate_up[..., width:]), dim=-1)


# What `engine.derived` runs in backward: the forward's function on inputs read back (`derived.kept_as`).
def _rms_output_of(read_x, weight, rstd):
    return _rms_output(read_x(), weight, rstd)


def _swiglu_of(read_gate, read_up):
    return _swiglu_forward(read_gate(), read_up())


def _packed_swiglu_of(read_gate_up, width):
    return _packed_swiglu_forward(read_gate_up(), width)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offer_output):
        y, rstd = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        if offer_output:  # what reads y may keep its recipe instead of y (engine.derived)
            derived.offer(y, functools.partial(_rms_output_of, derived.kept_as(x), weight.detach(), rstd))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx = _rms_backward(dy, x, weight, rstd)
        dw = None
        if ctx.needs_input_grad[1]:
            xhat = (x.float() * rstd).to(x.dtype).float()
            dw = (dy.float() * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return dx, dw, None, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, offer_output):
        ctx.save_for_backward(gate, up)
        h = _swiglu_forward(gate, up)
        if offer_output:
            derived.offer(h, functools.partial(_swiglu_of, derived.kept_as(gate), derived.kept_as(up)))
        return h

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        return *_swiglu_backward(dh, gate, up), None


class _PackedSwiGLU(torch.autograd.Function):
    """SwiGLU of gate and up stored side by side in one tensor (…, 2·width)."""

    @staticmethod
    def forward(ctx, gate_up, width, offer_output):
        ctx.save_for_backward(gate_up)
        ctx.width = width
        h = _packed_swiglu_forward(gate_up, width)
        if offer_output:  # gate_up read through its own offer where it waits in host memory (engine.derived.to_host)
            derived.offer(h, functools.partial(_packed_swiglu_of, derived.kept_as(gate_up), width))
        return h

    @staticmethod
    def backward(ctx, dh):
        (gate_up,) = ctx.saved_tensors
        return _packed_swiglu_backward(dh, gate_up, ctx.width), None, None


def packed_swiglu(gate_up):
    """silu(gate) · up for gate and up side by side in the last dimension (the joint gate/up output)."""
    return _PackedSwiGLU.apply(gate_up, gate_up.shape[-1] // 2, derived.wanted())


def rms_norm(x, weight, eps):
    return _RMSNorm.apply(x, weight, eps, derived.wanted())


def swiglu(gate, up):
    return _SwiGLU.apply(gate, up, derived.wanted())


def _norm_forward(self, x):
    return rms_norm(x, self.weight, self.variance_epsilon)


def _run_mlp(self, x):
    group = getattr(self.gate_proj, GROUP_ATTR, None)
    gate_up = group.joint_output(x) if group is not None and group.members == [self.gate_proj, self.up_proj] else None
    host = replay.host_keeper(self)  # a layer whose gate/up activations wait in host memory (engine.memory)
    if gate_up is not None:  # gate and up from one node, side by side (engine.grouped)
        if host is not None:
            derived.to_host(gate_up, host[0], (host[1], "gate_up"))
        return self.down_proj(packed_swiglu(gate_up))
    gate, up = self.gate_proj(x), self.up_proj(x)
    if host is not None:
        derived.to_host(gate, host[0], (host[1], "gate"))
        derived.to_host(up, host[0], (host[1], "up"))
    return self.down_proj(swiglu(gate, up))


def _mlp_forward(self, x):
    tokens = x.numel() // x.shape[-1]
    width = getattr(self, "intermediate_size", None) or self.config.intermediate_size
    run = types.MethodType(_run_mlp, self)
    if replay.defers(self):  # inside a recomputed layer's rebuild: the MLP runs in backward only
        return replay.deferred_mlp(self, x, run, replay.deferred_chunk_tokens(width, tokens, replay.rebuilds_whole(self)))
    chunk = replay.mlp_chunk_tokens(width, tokens)
    if not torch.is_grad_enabled() and tokens > chunk:
        return replay.chunked_without_grad(x, run, chunk)
    return run(x)


def is_plain_rms_norm(module) -> bool:
    """Llama/Qwen/Mistral RMSNorm (weight * x̂); Gemma's (1 + weight) variant is not this."""
    name = type(module).__name__
    return name.endswith("RMSNorm") and not name.startswith("Gemma") and hasattr(module, "variance_epsilon") and hasattr(module, "weight")


def is_swiglu_mlp(module) -> bool:
    act = getattr(getattr(module, "config", None), "hidden_act", None)
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) and act in ("silu", "swish")


def patch_rope(model) -> bool:
    """Point the model's modelling module at `rope`. transformers' attention looks up
    `apply_rotary_pos_emb` in its module at each call, so the patch holds for every model of that
    type in this process; `rope` computes the same function, so a plain-path model is unaffected
    beyond rounding. Returns False where the module has no such function (left as it is)."""
    module = sys.modules.get(type(causal_lm_of(model)).__module__)
    if module is None or not callable(getattr(module, "apply_rotary_pos_emb", None)):
        return False
    module.apply_rotary_pos_emb = rope
    return True


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
