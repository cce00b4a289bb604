"""Activation memory policy: keep what fits, recompute the rest, offload when memory is tight.

Per decoder layer, training keeps activations of roughly `layer_activation_bytes` per token. The
policy keeps all of them when they fit in the budget (no recompute: fastest); otherwise it
recomputes the fewest layers that make them fit (each such layer keeps only its input); and when
even that does not fit, it recomputes every layer and moves the kept inputs to pinned CPU memory.

When the plan still runs out of memory (the estimate is an estimate), `escalate` gives the next
plan to try: a quarter more of the layers recompute, then all of them, then offload.

>>> plan = plan_memory(layers=16, tokens=8192, per_token_layer=80_000, hidden_bytes=4096, budget=6e9)
>>> plan.mode, plan.checkpointed
('checkpoint', 9)
>>> [(p.mode, p.checkpointed) for p in (escalate(plan, 16), escalate(escalate(plan, 16), 16))]
[('checkpoint', 13), ('checkpoint', 16)]
>>> escalate(MemoryPlan("checkpoint", 16, 0.0), 16).mode, escalate(MemoryPlan("offload", 16, 0.0), 16)
('offload', None)
"""

from __future__ import annotations

import logging
import math
import types
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class MemoryPlan:
    mode: str  # none | checkpoint | offload
    checkpointed: int  # how many decoder layers recompute in backward
    estimate_gib: float  # planned activation memory on the GPU


# What layer_activation_bytes counts falls short of what a layer keeps: on an H200, llama-8b QLoRA at
# 16,384 tokens with nothing recomputed kept ~5% more (attention's softmax statistics, the LoRA x·Aᵀ,
# the norms' fp32 scales and allocator rounding are not counted). 10% over keeps a margin.
CALIBRATION = 1.10


def layer_activation_bytes(config, dtype_bytes: int = 2) -> int:
    """Bytes kept per token per decoder layer on honed's fused path (counted from what each node
    saves, then scaled by CALIBRATION to what was measured)."""
    d = config.hidden_size
    f = config.intermediate_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * hd
    kv = config.num_key_value_heads * hd
    # norm inputs/outputs (4d), q/k/v after rope and attention out (+ its contiguous copy), o input,
    # gate/up/product (3f), small LoRA x·Aᵀ and fp32 norm scales ignored.
    counted = dtype_bytes * (4 * d + 2 * q + 2 * kv + q + q + 3 * f)
    return int(counted * CALIBRATION)


def backward_transient_bytes(config, dtype_bytes: int = 2) -> int:
    """Per token, what a layer's backward holds on top of what it kept: the SwiGLU gradients of gate
    and up (2f) and the hidden-size gradients flowing through it (a few d)."""
    return dtype_bytes * (2 * config.intermediate_size + 4 * config.hidden_size)


def plan_memory(*, layers: int, tokens: int, per_token_layer: int, hidden_bytes: int, budget: float, forced: str | None = None,
                transient_per_token: int = 0) -> MemoryPlan:
    budget = budget - tokens * transient_per_token  # the backward's working memory is never available to keep activations
    full = layers * tokens * per_token_layer
    kept_input = tokens * hidden_bytes
    one_layer = tokens * per_token_layer
    if forced == "none" or (forced is None and full <= budget):
        return MemoryPlan("none", 0, full / 2**30)
    if forced == "offload":
        return MemoryPlan("offload", layers, one_layer / 2**30)
    # recompute n layers: (layers - n) keep everything, n keep their input, one layer is rebuilt at a time
    saving = one_layer - kept_input
    n = layers if forced == "checkpoint" else min(layers, math.ceil((full + one_layer - budget) / max(saving, 1)))
    est = (layers - n) * one_layer + n * kept_input + one_layer
    if forced is None and est > budget:
        return MemoryPlan("offload", layers, one_layer / 2**30)
    return MemoryPlan("checkpoint", n, est / 2**30)


def escalate(plan: MemoryPlan, layers: int) -> MemoryPlan | None:
    """The next plan after `plan` ran out of memory: recompute a quarter more of the layers, then all
    of them, then offload their inputs too; None when offloading already did not fit."""
    if plan.mode == "offload":
        return None
    if plan.mode == "checkpoint" and plan.checkpointed >= layers:
        return MemoryPlan("offload", layers, plan.estimate_gib)
    more = min(layers, plan.checkpointed + max(1, math.ceil(layers / 4)))
    return MemoryPlan("checkpoint", more, plan.estimate_gib)


class _Offloader:
    """Moves kept layer inputs to pinned CPU memory on a side stream, and back ahead of need.

    Forward: the copy to CPU overlaps the next layer's compute. Backward: when layer i is rebuilt,
    layer i-1's input is already on its way back, so the copy hides behind layer i's backward.
    Pinned buffers are reused between steps (allocating pinned memory is slow)."""

    def __init__(self):
        self.buffers: dict[int, torch.Tensor] = {}
        self.pending: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}
        self.stream = None

    def save(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if not hidden.is_cuda:
            return hidden
        buf = self.buffers.get(index)
        if buf is None or buf.shape != hidden.shape or buf.dtype != hidden.dtype:
            buf = self.buffers[index] = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
        if self.stream is None:
            self.stream = torch.cuda.Stream(hidden.device)
        self.stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(self.stream):
            buf.copy_(hidden, non_blocking=True)
        hidden.record_stream(self.stream)  # its memory is not reused before the copy is done
        return buf

    def prefetch(self, index: int, device: torch.device) -> None:
        buf = self.buffers.get(index)
        if buf is None or index in self.pending or self.stream is None:
            return
        with torch.cuda.stream(self.stream):
            gpu = buf.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pending[index] = (gpu, done)

    def load(self, index: int, kept: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not kept.is_pinned():
            return kept
        self.prefetch(index, device)
        gpu, done = self.pending.pop(index)
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        gpu.record_stream(current)
        return gpu


class _Recompute(torch.autograd.Function):
    """Runs a layer without keeping its activations; backward re-runs it from the kept input."""

    @staticmethod
    def forward(ctx, hidden, run, index, offloader):
        ctx.run, ctx.device, ctx.index, ctx.offloader = run, hidden.device, index, offloader
        ctx.kept = offloader.save(index, hidden.detach()) if offloader is not None else hidden.detach()
        with torch.no_grad():
            return run(hidden)

    @staticmethod
    def backward(ctx, grad_out):
        off = ctx.offloader
        hidden = off.load(ctx.index, ctx.kept, ctx.device) if off is not None else ctx.kept
        if off is not None and ctx.index > 0:
            off.prefetch(ctx.index - 1, ctx.device)
        hidden = hidden.detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.run(hidden)
        torch.autograd.backward(out, grad_out)
        ctx.kept = ctx.run = None
        return hidden.grad, None, None, None


def _wrap_layer(layer, index: int, offloader: _Offloader | None):
    original = layer._honed_unplanned_forward

    def forward(self, hidden_states, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return original(hidden_states, *args, **kwargs)
        autocast = torch.is_autocast_enabled(hidden_states.device.type)
        dtype = torch.get_autocast_dtype(hidden_states.device.type)

        def run(h):
            with torch.autocast(h.device.type, dtype=dtype, enabled=autocast):
                out = original(h, *args, **kwargs)
            return out[0] if isinstance(out, tuple) else out

        if not hidden_states.requires_grad:  # first layer over frozen embeddings: still backprop into LoRA
            hidden_states = hidden_states.detach().requires_grad_(True)
        return _Recompute.apply(hidden_states, run, index, offloader)

    layer.forward = types.MethodType(forward, layer)


def apply_memory_plan(decoder_layers, plan: MemoryPlan) -> None:
    """Make the last `plan.checkpointed` decoder layers recompute in backward (layers are equally
    sized, so which ones does not change the peak); offload mode also keeps their inputs on the CPU."""
    offloader = _Offloader() if plan.mode == "offload" else None
    n = len(decoder_layers)
    for i, layer in enumerate(decoder_layers):
        # A plan can be applied again (after an out-of-memory escalation): start from the layer's own forward.
        if not hasattr(layer, "_honed_unplanned_forward"):
            layer._honed_unplanned_forward = layer.forward
        layer.forward = layer._honed_unplanned_forward
        if i >= n - plan.checkpointed:
            _wrap_layer(layer, i, offloader)
