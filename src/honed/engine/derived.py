"""Saved tensors that backward derives again instead of keeping: a norm's output, SwiGLU's output.

A decoder layer keeps, for backward, the input of every LoRA projection. Two of those inputs are
cheap functions of tensors the layer keeps anyway:

- the output of an RMSNorm (what q/k/v and gate/up read) is weight · x · rstd, and the norm's own
  node keeps x and rstd;
- the output of SwiGLU (what down_proj reads) is silu(gate) · up, and SwiGLU's node keeps gate and up.

So while `derived_saves()` is on, those nodes `offer` their output with a function that computes it
again, and a saved-tensor hook (`torch.autograd.graph.saved_tensors_hooks`) stores, in place of any
saved tensor that lies in an offered output's memory, only that function and the tensor's view
(size, stride, offset). Backward computes the output once, when a node first asks for it, and every
node that saved it reads the same copy. For a Llama-8b layer that is 2·hidden + intermediate values
per token (2 × 4,096 + 14,336: 29% of what a layer keeps) less memory, for two elementwise passes in
backward. The values are the same: the function is the same arithmetic as the forward.

A hook rather than each projection's own code: the tensors are saved by nodes that know nothing of
where their input came from (honed's LoRA nodes, peft's path, autograd's own matmuls), and a hook
reaches them all. `HONED_DERIVED_SAVES=0` keeps every saved tensor (to measure what this saves).

>>> import torch
>>> x = torch.randn(4, 8, requires_grad=True)
>>> with derived_saves():
...     y = x.exp()
...     offer(y, lambda: x.detach().exp())
...     loss = (y * y).sum()  # the product saves y: the hook stores how to derive it instead
>>> loss.backward()
>>> torch.allclose(x.grad, 2 * x.detach().exp() ** 2)
True
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from typing import Callable

import torch

ENABLED = os.environ.get("HONED_DERIVED_SAVES", "1") != "0"


class _Offered:
    """An output that can be derived again: its function, and the value once backward asked for it."""

    __slots__ = ("output", "derive", "value", "__weakref__")

    def __init__(self, output: torch.Tensor, derive: Callable[[], torch.Tensor]):
        self.output = weakref.ref(output)  # only to tell that the memory is still this output's
        self.derive = derive
        self.value = None

    def packed(self, output: torch.Tensor) -> None:
        """A node saved (a view of) the output: nothing to do for an output derived from others."""

    def materialize(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.derive()
        return self.value


class _OnHost(_Offered):
    """An output that waits in pinned host memory until backward: the first save starts its copy there
    (`engine.memory`'s offloader, on a side stream), backward brings it back (prefetched ahead of need
    where the offloader was asked to)."""

    __slots__ = ("offloader", "key", "device", "kept")

    def __init__(self, output: torch.Tensor, offloader, key):
        super().__init__(output, None)
        self.offloader, self.key, self.device, self.kept = offloader, key, output.device, None

    def packed(self, output: torch.Tensor) -> None:
        if self.kept is None:
            self.kept = self.offloader.save(self.key, output.detach(), lag=1)  # a copy may take two layers' compute

    def materialize(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.offloader.load(self.key, self.kept, self.device)
            self.kept = None
        return self.value


class _Derived:
    """What the hook stores for a saved tensor inside an offered output: the offer and the view."""

    __slots__ = ("offered", "size", "stride", "offset")

    def __init__(self, offered: _Offered, t: torch.Tensor):
        self.offered, self.size, self.stride, self.offset = offered, t.size(), t.stride(), t.storage_offset()


class _State(threading.local):
    def __init__(self):
        self.offers: dict[int, _Offered] | None = None  # storage address → offer, while derived_saves() is on


_state = _State()


def wanted() -> bool:
    """Whether a node about to run should `offer` its output: only while `derived_saves()` is on and
    grad is (else nothing saves the output, and an offer would only hold the node's inputs until the
    forward ends: a recomputed layer's first forward runs without grad). Asked before the node runs:
    inside it grad is always off."""
    return ENABLED and _state.offers is not None and torch.is_grad_enabled()


def _whole(t: torch.Tensor) -> bool:
    """A contiguous tensor that starts its own memory: what an offer can stand for."""
    return t.is_contiguous() and t.storage_offset() == 0 and t.numel() > 0


def _register(output: torch.Tensor, entry: _Offered) -> None:
    offers = _state.offers
    if offers is not None and _whole(output):
        offers[output.untyped_storage().data_ptr()] = entry


def _offer_holding(t: torch.Tensor) -> tuple[_Offered | None, torch.Tensor | None]:
    """The offer whose output owns t's memory, and that output; (None, None) where there is none.
    The address alone could be memory freed and handed to another tensor since; a live output at that
    address owns it, and a tensor there is a view of it."""
    offers = _state.offers
    if not offers:
        return None, None
    try:
        found = offers.get(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor subclass without storage of its own (e.g. a DTensor)
        return None, None
    held = None if found is None else found.output()
    if held is None or held.dtype != t.dtype or held.device != t.device:
        return None, None
    return found, held


def offer(output: torch.Tensor, derive: Callable[[], torch.Tensor]) -> None:
    """Say that `derive()` computes `output` again, bit for bit, from tensors kept anyway (it must not
    hold `output` itself). Does nothing outside `derived_saves()` or for an output that is not a whole
    contiguous tensor of its own memory."""
    if _state.offers is not None:
        _register(output, _Offered(output, derive))


def to_host(output: torch.Tensor, offloader, key) -> None:
    """Keep `output`, where a node saves it for backward, in pinned host memory instead of on the GPU
    (`_OnHost`); `offloader` is `engine.memory`'s, `key` its (layer index, name). Does nothing outside
    `derived_saves()`, without grad, or for an output that is not a whole contiguous tensor."""
    if _state.offers is not None and torch.is_grad_enabled():
        _register(output, _OnHost(output, offloader, key))


def kept_as(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    """How a derive function given to `offer` reads its input t in backward: through t's own offer
    where t is a whole offered output (so that the function holds the offer, not t: an input waiting
    on the host stays off the GPU), else t itself."""
    found, held = _offer_holding(t)
    if found is not None and held.shape == t.shape and t.storage_offset() == 0:
        return found.materialize
    kept = t.detach()
    return lambda: kept


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)`; where x is a whole offered output (a QLoRA norm's fp32 output, its weight being
    fp32), the copy is offered in turn, derived as that output's function cast to `dtype`."""
    y = x.to(dtype)
    if y is x:
        return y
    found, held = _offer_holding(x)
    if type(found) is _Offered and held.shape == x.shape and _whole(x):
        offer(y, functools.partial(_cast_of, found.derive, dtype))  # derive, not materialize: no fp32 copy stays cached
    return y


def _cast_of(derive: Callable[[], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return derive().to(dtype)


def _pack(t: torch.Tensor):
    found, held = _offer_holding(t)
    if found is None:
        return t
    found.packed(held)
    return _Derived(found, t)


def _unpack(saved):
    if isinstance(saved, _Derived):
        return saved.offered.materialize().as_strided(saved.size, saved.stride, saved.offset)
    return saved


@contextlib.contextmanager
def derived_saves(enabled: bool = True):
    """Around a forward with grad: saved tensors inside offered outputs are derived again (or brought
    back from the host) in backward. `enabled` False does nothing. HONED_DERIVED_SAVES=0 stops the
    norms' and SwiGLU's offers (`wanted`), not this.

    Each use holds offers of its own, dropped when it ends (what the hook stored keeps what it needs):
    a recomputed layer's rebuild, which runs inside a backward that a CUDA graph capture may run inside
    the step's forward, must not leave its tensors in the forward's offers until that forward ends."""
    if not enabled:
        yield
        return
    previous, _state.offers = _state.offers, {}
    try:
        if previous is None:
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                yield
        else:  # the hook is on already (an enclosing forward's)
            yield
    finally:
        _state.offers = previous


@contextlib.contextmanager
def paused():
    """No offers in here: around a forward that runs inside a backward and is backpropagated at once
    (`engine.replay`'s deferred MLP), where deriving would save nothing and an enclosing forward's
    offers would hold its tensors until that forward ends."""
    previous, _state.offers = _state.offers, None
    try:
        yield
    finally:
        _state.offers = previous
