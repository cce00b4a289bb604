"""Lean recompute: what a recomputed decoder layer does not run a second time.

A decoder layer that recomputes (`engine.memory`) keeps its input h and, in backward, runs its
forward again with grad to rebuild the graph, then backpropagates through it. Not all of that
second forward is needed:

- the attention output projection o = o_proj(a) is only added to the residual stream
  (h₂ = h + o). Its *input* a is needed again (the LoRA gradient reads it), its output is not,
  provided h₂ comes out bit for bit the same. So the first forward hands o over ("capture") and
  the layer keeps it beside h; the rebuild gets it back ("replay") instead of a matmul.
- the MLP's output is added to the residual stream and read by nothing else in the layer, so
  the rebuild does not run the MLP at all: a deferred node keeps only its input and, in
  backward, runs the MLP chunk by chunk (`mlp_chunk_tokens` tokens at a time) and backpropagates
  each chunk at once. Inside that, the down projection's output again is not needed (only its
  input, for the LoRA gradient), so it is skipped too.

For a Llama-shaped layer that removes o_proj and down_proj from the rebuild: about 35% of its
matmul work. Only one chunk's gate/up activations exist at a time, which is what lets very long
sequences fit. Replay needs the fused LoRA node (`engine.lora`) on o_proj / down_proj and the
lean SwiGLU MLP (`engine.layers`); where a layer has neither, it recomputes in full, as before.

The hand-over works through a thread-local slot per role that the fused nodes consult, set only
while `engine.memory` runs one layer: nothing changes for layers that do not recompute.

>>> mlp_chunk_tokens(intermediate_size=14336, tokens=4096)  # llama-8b, 2 × 2048 tokens: two chunks
2048
>>> mlp_chunk_tokens(intermediate_size=14336, tokens=262_144)
3712
>>> mlp_chunk_tokens(intermediate_size=8192, tokens=2048)  # fits in one
2048
"""

from __future__ import annotations

import contextlib
import threading

import torch

from honed.engine import derived

NOT_NEEDED = "not-needed"  # what `output_for` says when a node's output will never be read
_MLP_CHUNK_BUDGET = 2**29  # bytes of gate/up/product and their gradients that one MLP chunk may hold


class _Slots(threading.local):
    def __init__(self):
        self.capture_from = None  # capture: the module whose output to keep
        self.captured = None
        self.given_to = None  # replay: the module that gets `given` back instead of computing it
        self.given = None
        self.deferred_mlp = None  # replay: the MLP that defers itself to backward
        self.not_needed = None  # the module whose output nobody reads (down_proj inside a deferred MLP)
        self.mlp_on_host = None  # (mlp, offloader, layer index): this MLP's gate/up activations wait in host memory


_slots = _Slots()


def mlp_chunk_tokens(intermediate_size: int, tokens: int, budget_bytes: int = _MLP_CHUNK_BUDGET, dtype_bytes: int = 2) -> int:
    """Tokens per MLP chunk: `tokens` cut into the fewest equal chunks (rounded up to 128 tokens,
    whole GEMM tiles) whose gate, up and product plus the gradients of gate and up (5 × the
    intermediate size per token) fit in `budget_bytes`."""
    largest = max(128, budget_bytes // (5 * intermediate_size * dtype_bytes))
    pieces = -(-tokens // largest)
    each = -(-tokens // pieces)
    return min(tokens, -(-each // 128) * 128)


_WHOLE_MLP_ATTR = "_honed_whole_mlp"


def set_whole_mlp(mlp, whole: bool) -> None:
    """Whether this MLP, when deferred in a rebuild, runs over all tokens at once (the memory plan's
    `whole_mlp`) instead of `mlp_chunk_tokens` at a time."""
    setattr(mlp, _WHOLE_MLP_ATTR, whole)


def rebuilds_whole(mlp) -> bool:
    """What `set_whole_mlp` last set for this MLP (False before any plan)."""
    return getattr(mlp, _WHOLE_MLP_ATTR, False)


def deferred_chunk_tokens(intermediate_size: int, tokens: int, whole: bool) -> int:
    """Tokens per chunk of a deferred MLP's run: all of them when `whole`, else `mlp_chunk_tokens`.
    The memory plan counts the rebuilt layer with the same rule."""
    return tokens if whole else mlp_chunk_tokens(intermediate_size, tokens)


# ---- what the fused nodes ask ------------------------------------------------------------------


def output_for(module):
    """For a fused projection about to run: None (compute as usual), a tensor (this is your output,
    captured in the first forward), or NOT_NEEDED (nobody reads your output: skip the matmul)."""
    s = _slots
    if s.given_to is module:
        return s.given
    if s.not_needed is module:
        return NOT_NEEDED
    return None


def offer_output(module, output: torch.Tensor) -> None:
    """A fused projection's output, kept when this module's output is being captured."""
    if _slots.capture_from is module:
        _slots.captured = output.detach()


def defers(mlp) -> bool:
    return _slots.deferred_mlp is mlp and torch.is_grad_enabled()


# ---- what engine.memory sets around one layer ---------------------------------------------------


def attention_output_projection(layer):
    """The layer's o_proj (the module whose output is captured), or None for another layout."""
    return getattr(getattr(layer, "self_attn", None), "o_proj", None)


@contextlib.contextmanager
def capturing(layer):
    """Around a layer's first forward: yields a dict whose "o" is o_proj's output afterwards (None
    when o_proj is not a fused node, in which case the rebuild computes it)."""
    s, found = _slots, {"o": None}
    s.capture_from, s.captured = attention_output_projection(layer), None
    try:
        yield found
        found["o"] = s.captured
    finally:
        s.capture_from = s.captured = None


@contextlib.contextmanager
def replaying(layer, o: torch.Tensor | None):
    """Around a layer's rebuild in backward: o_proj gets `o` back, the MLP defers itself."""
    s = _slots
    s.given_to, s.given = (attention_output_projection(layer), o) if o is not None else (None, None)
    s.deferred_mlp = getattr(layer, "mlp", None)
    try:
        yield
    finally:
        s.given_to = s.given = s.deferred_mlp = None


@contextlib.contextmanager
def _output_not_needed(module):
    previous, _slots.not_needed = _slots.not_needed, module
    try:
        yield
    finally:
        _slots.not_needed = previous


@contextlib.contextmanager
def mlp_on_host(mlp, offloader, index: int):
    """Around a kept layer's forward (`engine.memory`'s `host_mlp` layers): what the MLP keeps of gate
    and up for backward waits in pinned host memory (`engine.derived.to_host`), under `offloader`'s
    keys (index, "gate_up") or (index, "gate") and (index, "up")."""
    previous, _slots.mlp_on_host = _slots.mlp_on_host, (mlp, offloader, index)
    try:
        yield
    finally:
        _slots.mlp_on_host = previous


def host_keeper(mlp):
    """(offloader, layer index) while `mlp_on_host` is on for this MLP, else None."""
    slot = _slots.mlp_on_host
    return (slot[1], slot[2]) if slot is not None and slot[0] is mlp else None


# ---- the deferred MLP ---------------------------------------------------------------------------


class _DeferredMLP(torch.autograd.Function):
    """Forward: zeros of the output's shape (one element, expanded), keeping only the input.
    Backward: the MLP, chunk by chunk, run with grad and backpropagated at once (its LoRA weights
    get their gradients there)."""

    @staticmethod
    def forward(ctx, x, mlp, run_mlp, chunk):
        ctx.mlp, ctx.run_mlp, ctx.chunk = mlp, run_mlp, chunk
        device = x.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.save_for_backward(x)
        return x.new_zeros(()).expand(x.shape)  # read once, by the residual add: no memory, no fill kernel

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        width = x.shape[-1]
        flat_x, flat_dy = x.reshape(-1, width), dy.reshape(-1, width)
        dx = torch.empty_like(flat_x)
        enabled, dtype = ctx.autocast
        down = getattr(ctx.mlp, "down_proj", None)
        for start in range(0, flat_x.shape[0], ctx.chunk):
            piece = slice(start, start + ctx.chunk)
            xc = flat_x[piece].detach().requires_grad_(True)
            # Backward runs on autograd's own thread, where the forward's autocast is not on.
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled), _output_not_needed(down), derived.paused():
                yc = ctx.run_mlp(xc)
            torch.autograd.backward(yc, flat_dy[piece])
            dx[piece] = xc.grad
        ctx.mlp = ctx.run_mlp = None
        return dx.view_as(x), None, None, None


def deferred_mlp(mlp, x: torch.Tensor, run_mlp, chunk: int) -> torch.Tensor:
    return _DeferredMLP.apply(x, mlp, run_mlp, chunk)


def chunked_without_grad(x: torch.Tensor, run_mlp, chunk: int) -> torch.Tensor:
    """The MLP over many tokens without grad, a chunk at a time, so that its gate/up activations
    never exist for all of them at once."""
    width = x.shape[-1]
    flat = x.reshape(-1, width)
    pieces = [run_mlp(flat[start:start + chunk]) for start in range(0, flat.shape[0], chunk)]
    out = torch.cat(pieces)
    return out.view(*x.shape[:-1], out.shape[-1])
