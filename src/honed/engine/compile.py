"""torch.compile for the engine's elementwise math on CUDA, eager everywhere else.

Each kernel's elementwise part (norm, SwiGLU, softmax-minus-one-hot of a logits chunk) is a pure
function; on a GPU Inductor fuses it into one or two passes over memory instead of one pass per
operation. The first call compiles (seconds, counted in `honed bench`'s warmup_s); if compiling
fails the function stays eager and says so once.

>>> import torch
>>> f = on_cuda_compiled(lambda x: x * 2)
>>> f(torch.ones(2)).tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)
ENABLED = os.environ.get("HONED_COMPILE", "1") != "0"


def on_cuda_compiled(fn):
    state = {"compiled": None, "failed": not ENABLED}

    @functools.wraps(fn)
    def wrapper(*args):
        if state["failed"] or not args[0].is_cuda:
            return fn(*args)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=None)
        try:
            return state["compiled"](*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the same math, eager
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise  # a recompile inside a CUDA graph capture: the capture fails (engine.graphs), the compiled code stays
            log.warning("torch.compile of %s failed (%s); running it eagerly", fn.__name__, str(err).splitlines()[0][:200])
            state["failed"] = True
            return fn(*args)

    return wrapper
