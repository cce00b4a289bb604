"""CUDA graphs for the decoder stack: the forward of every layer as one replay, the backward as another.

A recomputed or offloaded step of an 8B model launches about ten thousand small kernels; on a slow
host the GPU waits on Python for a good part of it (a profile at commit `775d216`, in
BENCHMARKS.md's git history: 59% busy on QLoRA `offload`). A CUDA graph records those launches once and replays them with one call, so the host
cost of the decoder stack disappears; the embedding, the loss and the optimizer stay as they are.
(Measured: 7% off llama-1b's `offload` step, 0.3–2.4% off the 8B ones on a host that kept up, for
1.0–1.3 GiB more memory: hence off by default, `training.cuda_graphs`.)

How it fits in a training step:

- The first layer's forward takes over the whole stack (`StackGraphs.install`): it runs every
  layer, as the model's own loop would, and the other layers hand their input back unchanged.
  transformers gives every layer the same keyword arguments (position embeddings, the varlen
  boundaries), so what the first layer receives is what all of them would.
- A stack *signature* is the shapes and dtypes of those inputs and every other value passed (for
  example the longest sequence of a varlen batch). The first time a signature is seen the stack
  runs eagerly; the second time it runs once more eagerly on a side stream under the capture's own
  conditions (torch.compile, Triton and cuBLAS settle there) and is then captured; from then on it
  replays. A batch with another signature runs eagerly, so nothing is ever wrong,
  only slower; after `max_captures` captures no more are made (data whose shapes vary per batch).
- Gradients: the captured backward adds into the LoRA weights' `.grad` tensors in place (one
  foreach add of what autograd.grad returns, and the rebuild's own backward inside recomputed
  layers), so the graphs own those tensors and put them back as `.grad` before each replay, zeroed
  when the optimizer had set them to None, as it does after each step.
- Memory: the graphs keep their own memory pool for the stack's activations, which the eager loss
  and optimizer cannot reuse: a step takes more GPU memory than without graphs. `held_bytes` says
  how much the pool holds.

Only the training forward (grad on, module in training mode) is captured; evaluation runs eagerly.
On a CPU the backend that replays by running the code again (`RerunBackend`) lets the tests check
all of this wiring against the eager stack.
"""

from __future__ import annotations

import contextlib
import logging
import time
import types
import warnings

import torch

log = logging.getLogger(__name__)

_SCALARS = (int, float, bool, str, type(None))
_ATTR = "_honed_graphs"
_INNER = "_honed_graph_inner"


# ---- signatures and static inputs ---------------------------------------------------------------


def _describe(value):
    """A hashable description of one input for the signature; raises TypeError for what a graph
    cannot take as a static input (a cache object, a mask dict, a tensor that needs a gradient)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise TypeError("an input besides the hidden states needs a gradient")
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_describe(v) for v in value))
    if isinstance(value, _SCALARS):
        return ("value", value)
    raise TypeError(f"an input of type {type(value).__name__}")


def stack_signature(hidden: torch.Tensor, kwargs: dict) -> tuple:
    """What must match for a captured stack to replay on these inputs (TypeError: cannot capture)."""
    device = hidden.device.type
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) if device in ("cuda", "cpu") else (False, None)
    return (tuple(hidden.shape), hidden.dtype, hidden.requires_grad, autocast, tuple(sorted((k, _describe(v)) for k, v in kwargs.items())))


def _static_copy(value, memo: dict):
    """`value` with every tensor cloned (a tensor passed twice stays one buffer, as cu_seq_lens_q/k are)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.detach().clone()
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(_static_copy(v, memo) for v in value)
    return value


def _pairs(static, live):
    """(static buffer, live tensor) for every tensor in two structures of the same signature."""
    if isinstance(static, torch.Tensor):
        yield static, live
    elif isinstance(static, (tuple, list)):
        for s, v in zip(static, live):
            yield from _pairs(s, v)


# ---- backends -----------------------------------------------------------------------------------


class CudaGraphBackend:
    """Captures with torch.cuda.graph into one memory pool shared by all of a stack's graphs (they
    never run at the same time, and each signature's forward and backward replay in the order they
    were captured)."""

    def __init__(self):
        self.pool = None

    @staticmethod
    @contextlib.contextmanager
    def side_stream():
        """Where the eager warm-up runs: a side stream that starts after, and ends before, the current
        stream's work (as torch.cuda.make_graphed_callables warms up)."""
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            yield
        current.wait_stream(side)

    def capture(self, fn):
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            fn()
        return graph

    @staticmethod
    def replay(graph) -> None:
        graph.replay()


class RerunBackend:
    """A stand-in for CPU tests: "capturing" runs `fn` and keeps it; "replaying" runs it again."""

    pool = None

    side_stream = staticmethod(contextlib.nullcontext)

    @staticmethod
    def capture(fn):
        fn()
        return fn

    @staticmethod
    def replay(graph) -> None:
        graph()


# ---- one captured signature ---------------------------------------------------------------------


class _Captured:
    """The static inputs, output and gradient buffers of one signature, and its two graphs."""

    def __init__(self, hidden, kwargs):
        memo: dict = {}
        # Always needs a gradient in the captured graph: autograd.grad only runs the nodes between the
        # output and what it differentiates, and recomputed layers reach their LoRA weights only
        # inside their own backward, so the stack's input is what makes every layer's backward run.
        self.hidden = hidden.detach().clone().requires_grad_(True)
        self.kwargs = {k: _static_copy(v, memo) for k, v in kwargs.items()}
        self.output = None  # the last layer's output: written by the forward graph
        self.grad_output = None  # what the backward graph reads as d loss / d output
        self.hidden_grad = None  # what it writes as d loss / d hidden (when the hidden states need a gradient)
        self.forward_graph = self.backward_graph = None

    def load(self, hidden, kwargs) -> None:
        """Copy a batch's inputs into the static buffers (skipped where they are already there)."""
        if hidden.data_ptr() != self.hidden.data_ptr():
            self.hidden.detach().copy_(hidden)
        for static, live in _pairs([self.kwargs[k] for k in sorted(self.kwargs)], [kwargs[k] for k in sorted(kwargs)]):
            if static.data_ptr() != live.data_ptr():
                static.copy_(live)


class _Replay(torch.autograd.Function):
    """The stack as one autograd node: forward replays the forward graph, backward the backward graph.
    `anchor` (an empty tensor that needs a gradient) makes the output need one when the hidden states
    do not (frozen embeddings): the LoRA weights' gradients are written by the graph itself."""

    @staticmethod
    def forward(ctx, stack, captured, hidden, kwargs, anchor):
        stack.bind_gradients()
        captured.load(hidden, kwargs)
        stack.backend.replay(captured.forward_graph)
        ctx.stack, ctx.captured, ctx.hidden_needs_grad = stack, captured, hidden.requires_grad
        return captured.output.detach()

    @staticmethod
    def backward(ctx, grad):
        stack, captured = ctx.stack, ctx.captured
        captured.grad_output.copy_(grad)
        stack.backend.replay(captured.backward_graph)
        grad_hidden = captured.hidden_grad.clone() if ctx.hidden_needs_grad and captured.hidden_grad is not None else None
        return None, None, grad_hidden, None, None


# ---- the stack ----------------------------------------------------------------------------------


class StackGraphs:
    """Graph capture and replay of a decoder stack (see the module docstring). `install` patches the
    layers' forwards (call it again after anything else patches them, e.g. a new memory plan);
    `join` makes the current stream wait for work the stack forked onto other streams (the
    offloader's copies), which a capture must join back before it ends; `reset` drops what such work
    left pending when a capture failed."""

    def __init__(self, layers, *, join=lambda: None, reset=lambda: None, max_captures: int = 4, backend=None):
        self.layers = list(layers)
        self.join, self.reset = join, reset
        self.max_captures = max_captures
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.captured: dict[tuple, _Captured] = {}
        self.seen: dict[tuple, int] = {}
        self.captures = self.replays = self.eager_runs = 0
        self.capture_seconds = 0.0
        self.disabled: str | None = None  # why graphs stopped (a failed capture)
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []  # the .grad tensors the graphs add into
        self.anchor = None
        self._inside = False  # the stack is running its layers: each layer does its own work
        self._handed_over = None  # the stack's output, which the later layers pass on unchanged
        self._said_full = False

    # -- wiring --

    def install(self) -> None:
        """Point every layer's forward at the stack (the first) or a hand-over (the others)."""
        for i, layer in enumerate(self.layers):
            setattr(layer, _INNER, layer.forward)
            setattr(layer, _ATTR, self)
            layer.forward = types.MethodType(_first_layer_forward if i == 0 else _later_layer_forward, layer)

    def forget(self) -> None:
        """Drop every captured graph (the layers changed: a new memory plan); later steps capture anew."""
        self.captured.clear()
        self.seen.clear()
        self.captures = 0
        self.backend = type(self.backend)()  # a fresh pool; the old one goes with its graphs

    @contextlib.contextmanager
    def inside(self):
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    def run_layers(self, hidden, kwargs):
        """Every layer, as the model's loop runs them (through the modules, so their hooks run)."""
        with self.inside():
            for layer in self.layers:
                out = layer(hidden, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    # -- gradients --

    def trainable(self) -> list[torch.Tensor]:
        seen, params = set(), []
        for layer in self.layers:
            for p in layer.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def bind_gradients(self) -> None:
        """Make each trainable weight's .grad the tensor the graphs add into, keeping its value (zero
        where it was None: the optimizer's zero_grad(set_to_none=True))."""
        to_zero = []
        for p, g in zip(self.params, self.grads):
            if p.grad is g:
                continue
            if p.grad is None:
                to_zero.append(g)
            else:
                g.copy_(p.grad)
            p.grad = g
        if to_zero:
            torch._foreach_zero_(to_zero)

    # -- capture and replay --

    def applies(self, hidden, args) -> bool:
        return not self._inside and not args and self.disabled is None and torch.is_grad_enabled() and self.layers[0].training

    def run(self, hidden, kwargs):
        """The stack's output through a graph, or None: run it eagerly (first sight of a signature, or
        one that cannot be captured)."""
        try:
            key = stack_signature(hidden, kwargs)
        except TypeError:
            self.eager_runs += 1
            return None
        captured = self.captured.get(key)
        if captured is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < 2 or not self._room_for_another():
                self.eager_runs += 1
                return None
            captured = self.capture(key, hidden, kwargs)
            if captured is None:
                return None
        self.replays += 1
        return _Replay.apply(self, captured, hidden, kwargs, self.anchor)

    def _room_for_another(self) -> bool:
        if self.captures < self.max_captures:
            return True
        if not self._said_full:
            self._said_full = True
            log.info("CUDA graphs: %d stack shapes captured, later shapes run eagerly (the batches' shapes vary; "
                     "rows of one length and one set of sequence boundaries replay)", self.captures)
        return False

    def capture(self, key, hidden, kwargs) -> _Captured | None:
        """Capture the stack's forward and backward for this signature; None (and graphs off, said
        once) when capturing fails."""
        start = time.perf_counter()
        if not self.params:
            self.params = self.trainable()
            self.grads = [torch.zeros_like(p) for p in self.params]
            self.anchor = torch.empty(0, device=hidden.device, requires_grad=True)
        self.bind_gradients()
        captured = _Captured(hidden, kwargs)

        # Captured under the step's own autocast and grad mode, as the eager run before it: torch.compile
        # guards on both, and a recompile cannot happen inside a capture.
        def forward():  # grad on: a backend that runs this again does so inside an autograd node's forward
            with torch.enable_grad():
                captured.output = self.run_layers(captured.hidden, captured.kwargs)
            self.join()

        # Gradients by autograd.grad, added into the .grad tensors by one foreach call: a leaf's own
        # accumulation node may belong to a graph of an earlier eager step, on another stream, which a
        # capture cannot wait on. (Recomputed layers accumulate inside their rebuild, which is new.)
        wrt = [*self.params, captured.hidden]

        def backward():
            grads = torch.autograd.grad(captured.output, wrt, captured.grad_output, allow_unused=True)
            pairs = [(own, g) for own, g in zip(self.grads, grads) if g is not None]
            if pairs:
                torch._foreach_add_([own for own, _ in pairs], [g for _, g in pairs])
            captured.hidden_grad = grads[-1]
            self.join()

        try:
            # One eager pass under the capture's conditions first (torch's advice for warming up): any
            # lazy initialisation or torch.compile recompile happens here, where it may, not in the capture.
            # Its backward adds zeros to the gradients.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with self.backend.side_stream():
                    forward()
                    captured.grad_output = torch.zeros_like(captured.output)
                    backward()
            _refuse_stale_accumulators(caught)
            captured.forward_graph = self.backend.capture(forward)
            captured.backward_graph = self.backend.capture(backward)
        except torch.cuda.OutOfMemoryError:
            raise  # the memory fallback (engine.with_memory_fallback) plans leaner and forgets the graphs
        except Exception as err:  # any other failure: train on, eagerly, and say why once
            self.disabled = f"capture failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            log.warning("CUDA graphs off for this run: %s; the stack runs eagerly", self.disabled)
            log.debug("the capture's failure", exc_info=True)
            self.captured.clear()
            self.reset()  # what the failed capture left half done (events recorded in it mean nothing outside)
            return None
        self.captured[key] = captured
        self.captures += 1
        seconds = time.perf_counter() - start
        self.capture_seconds += seconds
        log.info("CUDA graphs: captured the decoder stack's forward and backward (%d layers, shape %s) in %.1f s",
                 len(self.layers), "×".join(map(str, key[0])), seconds)
        return captured

    def held_bytes(self) -> int:
        """GPU memory in the graphs' pool (their activations and buffers): 0 without a CUDA pool."""
        pool = getattr(self.backend, "pool", None)
        if pool is None or not torch.cuda.is_available():
            return 0
        segments = torch.cuda.memory_snapshot()
        return sum(s["total_size"] for s in segments if tuple(s.get("segment_pool_id", ())) == tuple(pool))

    def summary(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "eager_runs": self.eager_runs,
                "capture_s": round(self.capture_seconds, 2), "disabled": self.disabled}


class NotCapturable(RuntimeError):
    """Found before capturing: capturing would fail (and a failed capture leaves CUDA's random
    number generator unusable for the rest of the process)."""


_STALE_ACCUMULATOR = "AccumulateGrad node's stream does not match"


def _refuse_stale_accumulators(caught) -> None:
    """Raise NotCapturable when the warm-up met a gradient accumulator of an earlier step's autograd
    graph (torch warns of it): a capture would have to wait on the default stream. Other warnings
    are passed on."""
    stale = False
    for w in caught:
        if _STALE_ACCUMULATOR in str(w.message):
            stale = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if stale:
        raise NotCapturable("an earlier micro-batch's autograd graph is still referenced (its loss tensor kept in a variable "
                            "through the next forward); drop it after backward (`del loss`)")


def _first_layer_forward(layer, hidden, *args, **kwargs):
    stack: StackGraphs = getattr(layer, _ATTR)
    inner = getattr(layer, _INNER)
    stack._handed_over = None
    if not stack.applies(hidden, args):
        return inner(hidden, *args, **kwargs)
    out = stack.run(hidden, kwargs)
    if out is None:
        return inner(hidden, *args, **kwargs)
    stack._handed_over = out
    return out


def _later_layer_forward(layer, hidden, *args, **kwargs):
    stack: StackGraphs = getattr(layer, _ATTR)
    if not stack._inside and hidden is stack._handed_over and hidden is not None:
        return hidden  # the first layer already ran this one, inside the stack's graph
    return getattr(layer, _INNER)(hidden, *args, **kwargs)
