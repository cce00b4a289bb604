"""Sibling LoRA projections that read the same input — q/k/v, gate/up — as one autograd node.

A Llama-style layer feeds one tensor to q_proj, k_proj and v_proj, and another to gate_proj and
up_proj. Run one by one, each projection reads its input again for its own x·Aᵀ, its own input
quantisation (fp8), and in backward makes its own dx that autograd then adds up. As one node:

    y = x·[W₁; W₂; W₃]ᵀ + (x·[A₁; A₂; A₃]ᵀ)·blockdiag(s₁B₁, s₂B₂, s₃B₃)ᵀ

and in backward, with dy the gradients of the three outputs side by side,

    d(xAᵀ) = dy·blockdiag(sB)    dAᵢ = its rows of d(xAᵀ)ᵀ·x    dBᵢ = sᵢ · its block of dyᵀ·(xAᵀ)
    dx = dy·[W₁; W₂; W₃] + d(xAᵀ)·[A₁; A₂; A₃]

The off-diagonal blocks of dyᵀ·(xAᵀ) are computed and dropped: r columns against thousands of rows,
a few GFLOP, cheaper than launching one matmul per block. fp8 bases (`engine.fp8`) go further: the
group's weights are stored as one e4m3 matrix (each projection's `weight` a view of its rows), so
x is quantised once and each direction is one `_scaled_mm`. bf16 and NF4 bases keep their own
tensors (a merged model must not come out with weights that share memory) and run one matmul each,
written into the columns of the group's output, with dx accumulated in place.

The attention code of transformers calls the three projections itself: the first call
computes all three and hands the other two their outputs when they are called with the same input
(`SiblingGroup.output`); anything else (another input, an adapter switched off on one of them)
runs each projection on its own. The MLP (`engine.layers`) asks for gate and up side by side and
hands them to a SwiGLU that reads both halves of the one tensor, so their gradient needs no copy.

`HONED_GROUP_PROJECTIONS=0` runs every projection on its own (to measure what grouping gains).

>>> import torch
>>> x, ws = torch.randn(5, 8), [torch.randn(6, 8), torch.randn(2, 8)]
>>> As, Bs = [torch.randn(3, 8), torch.randn(3, 8)], [torch.randn(6, 3), torch.randn(2, 3)]
>>> y = grouped_lora_linear(x, DenseBases(ws), As, Bs, (0.5, 2.0))
>>> refs = [reference_lora_linear(x, w, a, b, s) for w, a, b, s in zip(ws, As, Bs, (0.5, 2.0))]
>>> torch.allclose(y, torch.cat(refs, -1), atol=1e-5)
True
"""

from __future__ import annotations

import os

import torch

from honed.engine import derived, replay
from honed.engine.fp8 import SCALE_NAME, fp8_dgrad, fp8_linear, fp8_weight_scale
from honed.engine.layout import GROUP_ATTR, SIBLINGS, fusable
from honed.engine.lora import dequantize_base, fused_adapter, reference_lora_linear  # noqa: F401 (doctest)
from honed.utils.precision import compute_dtype_of

ENABLED = os.environ.get("HONED_GROUP_PROJECTIONS", "1") != "0"


# ---- the base weights of a group ----------------------------------------------------------------


class DenseBases:
    """bf16/fp16/fp32 or NF4 base weights, each its own tensor: one matmul per projection."""

    def __init__(self, weights, biases=None):
        self.weights = list(weights)
        self.biases = list(biases) if biases is not None else [None] * len(self.weights)
        self.columns = _column_slices([_out_features(w) for w in self.weights])

    def forward(self, x2: torch.Tensor) -> torch.Tensor:
        y = x2.new_empty(x2.shape[0], self.columns[-1].stop)
        for w, bias, cols in zip(self.weights, self.biases, self.columns):
            dense = dequantize_base(w, x2.dtype)
            if bias is None:
                torch.mm(x2, dense.t(), out=y[:, cols])
            else:
                torch.addmm(bias.to(x2.dtype), x2, dense.t(), out=y[:, cols])
        return y

    def dgrad(self, dy2: torch.Tensor) -> torch.Tensor:
        dx = None
        for w, cols in zip(self.weights, self.columns):
            dense = dequantize_base(w, dy2.dtype)
            dx = dy2[:, cols] @ dense if dx is None else dx.addmm_(dy2[:, cols], dense)
        return dx


class Fp8Bases:
    """fp8 base weights stored as one e4m3 matrix (rows of every projection) and one scale vector."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, biases=None):
        self.weight, self.scale = weight, scale
        self.biases = biases if biases is not None and any(b is not None for b in biases) else None

    def forward(self, x2: torch.Tensor) -> torch.Tensor:
        bias = None if self.biases is None else torch.cat([b.to(x2.dtype) for b in self.biases])
        return fp8_linear(x2, self.weight, self.scale, bias)

    def dgrad(self, dy2: torch.Tensor) -> torch.Tensor:
        return fp8_dgrad(dy2, self.weight, self.scale)


def _out_features(weight) -> int:
    """Output features of a base weight; an NF4 one (bitsandbytes Params4bit) is stored packed, its
    own shape is in its quant_state."""
    quant_state = getattr(weight, "quant_state", None)
    return int(quant_state.shape[0]) if quant_state is not None else weight.shape[0]


def _column_slices(sizes) -> list[slice]:
    slices, start = [], 0
    for size in sizes:
        slices.append(slice(start, start + size))
        start += size
    return slices


# ---- the node -----------------------------------------------------------------------------------


class _GroupedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bases, scales, *adapters):
        n = len(scales)
        lora_as, lora_bs = adapters[:n], adapters[n:]
        dtype = x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        a = torch.cat(lora_as).to(dtype)  # (Σr, in)
        # The scales folded into the B blocks in the masters' precision, so the bf16 copy rounds once
        # (one multiply for the whole matrix when the projections share their scale, as they usually do).
        if len(set(scales)) == 1:
            b = torch.block_diag(*lora_bs)
            b = (b if scales[0] == 1.0 else b.mul_(scales[0])).to(dtype)  # (Σout, Σr)
        else:
            b = torch.block_diag(*(lb * s for lb, s in zip(lora_bs, scales))).to(dtype)
        xa = x2 @ a.t()
        y = bases.forward(x2)
        y.addmm_(xa, b.t())
        ctx.save_for_backward(x2, xa, a, b)
        ctx.bases, ctx.scales = bases, scales
        ctx.rank_rows = _column_slices([la.shape[0] for la in lora_as])
        ctx.out_rows = _column_slices([lb.shape[0] for lb in lora_bs])
        ctx.grad_dtypes = [t.dtype for t in adapters]
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, xa, a, b = ctx.saved_tensors
        n = len(ctx.scales)
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        dxa = dy2 @ b  # (N, Σr), each block already times its scale
        grads_a, grads_b = [None] * n, [None] * n
        if any(ctx.needs_input_grad[3 + n:]):
            every_block = dy2.t() @ xa  # (Σout, Σr): the diagonal blocks are the B gradients
            for i, (rows, ranks, s) in enumerate(zip(ctx.out_rows, ctx.rank_rows, ctx.scales)):
                if ctx.needs_input_grad[3 + n + i]:
                    grads_b[i] = every_block[rows, ranks].mul(s).to(ctx.grad_dtypes[n + i])
        if any(ctx.needs_input_grad[3:3 + n]):
            every_a = dxa.t() @ x2  # (Σr, in)
            for i, ranks in enumerate(ctx.rank_rows):
                if ctx.needs_input_grad[3 + i]:
                    grads_a[i] = every_a[ranks].to(ctx.grad_dtypes[i])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.bases.dgrad(dy2).addmm_(dxa, a).view(*dy.shape[:-1], x2.shape[-1])
        ctx.bases = None
        return grad_x, None, None, *grads_a, *grads_b


def grouped_lora_linear(x, bases, lora_as, lora_bs, scales) -> torch.Tensor:
    """The outputs of several LoRA projections of the same x, side by side (see module docstring).

    `bases`: `DenseBases` or `Fp8Bases`; `lora_as` / `lora_bs` / `scales`: one per projection, in
    the order of the bases' rows. Gradients come back for x and every A and B."""
    return _GroupedLoraLinear.apply(x, bases, tuple(float(s) for s in scales), *lora_as, *lora_bs)


# ---- siblings in a model ------------------------------------------------------------------------


class SiblingGroup:
    """Projections of one parent that read the same input (one of `SIBLINGS`), run together."""

    def __init__(self, members, copy_last: bool):
        self.members = list(members)
        self.sizes = [m.base_layer.out_features for m in self.members]
        # Attention keeps v for backward: a view of the joint output would keep q's and k's columns
        # alive with it, so v is handed out as a copy of its own (N × kv width, a small copy).
        self.copy_last = copy_last
        self.fp8 = None  # (weight, scale) when the fp8 bases are stored as one matrix
        self._pending = {}  # member → (the input the first call saw, this member's output)

    def _bases(self):
        layers = [m.base_layer for m in self.members]
        if self.fp8 is not None:
            weight, scale = self.fp8
            if all(layer.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for layer in layers):
                return Fp8Bases(weight, scale, [layer.bias for layer in layers])
            return None  # re-stored since (cast, edited): each projection runs on its own
        if any(fp8_weight_scale(layer) is not None for layer in layers):
            return None
        return DenseBases([layer.weight for layer in layers], [layer.bias for layer in layers])

    def joint_output(self, x, name: str | None = None) -> torch.Tensor | None:
        """All members' outputs side by side (…, Σout), or None where they cannot run as one."""
        if not ENABLED:
            return None
        name = name or fused_adapter(self.members[0])
        if name is None or any(fused_adapter(m) != name or replay.output_for(m) is not None for m in self.members):
            return None
        bases = self._bases()
        if bases is None:
            return None
        ms = self.members
        return grouped_lora_linear(derived.cast(x, compute_dtype_of(x)), bases, [m.lora_A[name].weight for m in ms],
                                   [m.lora_B[name].weight for m in ms], [m.scaling[name] for m in ms])

    def output(self, member, x, name: str) -> torch.Tensor | None:
        """This member's output for input x: computed with all the others when it is the first
        member, handed over when the first one ran on this same x; None: compute it on your own."""
        if member is self.members[0]:
            self._pending = {}
            joint = self.joint_output(x, name)
            if joint is None:
                return None
            outputs = list(joint.split(self.sizes, dim=-1))
            if self.copy_last:
                outputs[-1] = outputs[-1].contiguous()
            self._pending = {m: (x, y) for m, y in zip(self.members[1:], outputs[1:])}
            return outputs[0]
        seen_x, y = self._pending.pop(member, (None, None))
        return y if seen_x is x else None


def group_siblings(model) -> int:
    """Join the fused LoRA projections listed in `SIBLINGS` into groups; returns how many groups.
    Stores the fp8 bases of each group as one matrix. Call after `patch_lora_layers` and `prepare_fp8`."""
    groups = 0
    stored_fp8 = False
    for parent in model.modules():
        for names in SIBLINGS:
            members = [getattr(parent, n, None) for n in names]
            if any(m is None or not fusable(m) for m in members):
                continue
            if len({m.base_layer.in_features for m in members}) != 1:
                continue
            group = SiblingGroup(members, copy_last=names[-1] == "v_proj")
            stored_fp8 |= _store_fp8_together(group)
            for m in members:
                setattr(m, GROUP_ATTR, group)
            groups += 1
    if stored_fp8 and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the separate fp8 matrices are free now; the memory plan follows
    return groups


def _store_fp8_together(group: SiblingGroup) -> bool:
    """When every base of the group is fp8, one e4m3 matrix for all of them, each base's weight and
    scale a view of its rows. Returns whether it did."""
    layers = [m.base_layer for m in group.members]
    scales = [fp8_weight_scale(layer) for layer in layers]
    if any(s is None for s in scales):
        return False
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in layers])
        scale = torch.cat(scales)
    for layer, rows in zip(layers, _column_slices(group.sizes)):
        layer.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
        setattr(layer, SCALE_NAME, scale[rows])
    group.fp8 = weight, scale
    return True

