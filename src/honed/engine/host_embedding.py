"""Frozen input embeddings kept in pinned host memory, their rows read by the GPU as a batch needs them.

LoRA and QLoRA never change the input embedding table, and a forward reads only the rows of the
batch's tokens: for llama-8b, 4,096 rows (33 MB) of 128,256 (1.05 GB) per 2 × 2,048 micro-batch.
Where the fused path's memory plan has to recompute layers, the GPU memory is worth more than the
table's place there: the table moves to pinned host memory, which the GPU can address directly, and
a Triton kernel on the compute stream copies the batch's rows from there over the host link. No host
synchronisation, no copy of the table: about 0.7 ms for llama-8b's 4,096 tokens at 50 GB/s.

It moves only where nothing changes but where the table lives: the weight is frozen, the module is a
plain `nn.Embedding` without `max_norm` (which would rewrite rows in place), and it is not the
lm_head's weight (a tied head multiplies by the whole table every step). The Parameter stays the same
object holding the same values, so `state_dict`, checkpoints and saved weights see it as before (on
the CPU), and `restore_embedding` puts it back on the GPU.

>>> table = torch.nn.Embedding(10, 4)
>>> table.weight.requires_grad_(False)  # doctest: +ELLIPSIS
Parameter containing:...
>>> ids = torch.tensor([[3, 1], [0, 9]])
>>> torch.equal(gather_rows(table.weight, ids), table(ids))
True
"""

from __future__ import annotations

import functools
import importlib.util
import types

import torch
import torch.nn.functional as F

_MOVED = "_honed_on_host"  # set on a module whose table lives in host memory
_COLUMNS_PER_PROGRAM = 1024


def blocker(lm) -> str | None:
    """Why this causal LM's input embeddings cannot move to host memory, or None when they can."""
    embedding = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    if type(embedding) is not torch.nn.Embedding:
        return f"the input embeddings are a {type(embedding).__name__}, not a plain nn.Embedding (trained, or scaled)"
    weight = embedding.weight
    if weight.requires_grad:
        return "the input embeddings train"
    if embedding.max_norm is not None:
        return "the input embeddings renormalise rows (max_norm)"
    head = getattr(getattr(lm, "lm_head", None), "weight", None)
    if head is not None and (head is weight or head.data_ptr() == weight.data_ptr()):
        return "the input embeddings are tied to lm_head, which reads the whole table every step"
    return None


def unavailable_reason(device: torch.device) -> str | None:
    """Why the GPU cannot read a host table here (None: it can)."""
    if device.type != "cuda":
        return "not a CUDA device"
    if not _triton_installed():
        return "Triton is not installed"
    return None


def move_to_host(embedding: torch.nn.Embedding) -> int:
    """Move a frozen embedding table to (pinned, where CUDA is) host memory and have the module read
    its rows from there. The Parameter object stays the same. Returns the bytes moved off the device."""
    weight = embedding.weight
    moved = weight.numel() * weight.element_size() if weight.device.type != "cpu" else 0
    host = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=torch.cuda.is_available())
    host.copy_(weight.data)
    weight.data = host
    embedding.forward = types.MethodType(_forward_from_host, embedding)  # instance attribute: hooks stay
    setattr(embedding, _MOVED, True)
    return moved


def restore_embedding(embedding: torch.nn.Embedding, device: torch.device) -> None:
    """Undo `move_to_host`: the table back on `device`, the module's own forward back."""
    if not getattr(embedding, _MOVED, False):
        return
    embedding.weight.data = embedding.weight.data.to(device)
    del embedding.forward
    delattr(embedding, _MOVED)


def on_host(embedding) -> bool:
    return bool(getattr(embedding, _MOVED, False))


def _forward_from_host(self, input_ids: torch.Tensor) -> torch.Tensor:
    return gather_rows(self.weight, input_ids)


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`F.embedding(ids, table)` on ids' device, wherever the table is: a host table with CUDA ids is
    read by the GPU directly (`_gather_from_host`)."""
    if table.device == ids.device:
        return F.embedding(ids, table)
    if table.device.type == "cpu" and ids.is_cuda and table.is_pinned():
        return _gather_from_host(table, ids)
    return F.embedding(ids.to(table.device), table).to(ids.device)  # a synchronising copy, for any other pairing


def _gather_from_host(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    rows, columns = table.shape
    flat = ids.reshape(-1).contiguous()
    out = torch.empty(flat.numel(), columns, dtype=table.dtype, device=ids.device)
    if flat.numel():
        grid = (flat.numel(), -(-columns // _COLUMNS_PER_PROGRAM))
        _kernel()[grid](table, flat, out, rows, columns, BLOCK=_COLUMNS_PER_PROGRAM, num_warps=4)
    return out.reshape(*ids.shape, columns)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernel():
    """The Triton kernel, defined on first use (Triton is imported only where there is a GPU)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gather_host_rows(table_ptr, ids_ptr, out_ptr, rows, columns, BLOCK: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        column = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        row = tl.load(ids_ptr + token).to(tl.int64)
        in_row = column < columns
        # An id outside the table reads nothing (zeros) instead of host memory past it; honed checks
        # the data's ids against the table before training (train.sft), as F.embedding would fail.
        in_table = (row >= 0) & (row < rows)
        values = tl.load(table_ptr + row * columns + column, mask=in_row & in_table, other=0)
        tl.store(out_ptr + token * columns + column, values, mask=in_row)

    return gather_host_rows
