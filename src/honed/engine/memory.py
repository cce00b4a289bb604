"""Activation memory policy: keep what fits, recompute the rest, offload when memory is tight.

Per decoder layer, training keeps activations of roughly `layer_activation_bytes` per token. The
policy keeps all of them when they fit in the budget (no recompute: fastest); otherwise it
recomputes the fewest layers that make them fit. What a recomputed layer keeps goes to pinned CPU
memory when the host has room for it ("offload"): the copies run on a side stream behind the
compute, and the GPU memory they free holds whole layers that then need no recompute. Without that
room the recomputed layers keep their tensors on the GPU ("checkpoint").

A recomputed layer keeps its input and, where the layer allows it, o_proj's output (`keep_o`):
with that, its rebuild in backward skips o_proj and down_proj and runs the MLP a chunk at a time
(`engine.replay`). Offloading drops `keep_o` when host memory cannot hold both.

With `training.host_mlp_layers`, the first layers that keep everything keep their MLP's gate/up
activations (most of what a layer keeps) in pinned host memory instead, copied behind the forward and
brought back ahead of their backward (`MemoryPlan.host_mlp`); the plan counts the memory that frees.

When the plan still runs out of memory (the estimate is an estimate), `escalate` gives the next
plan to try: a quarter more of the layers recompute, then all of them, then offload (a plan that
already offloads offloads a quarter more of the layers).

With Llama-8b-sized numbers (4,096 tokens, 170 kB a token per layer, 6 GB for activations),
offloading what 25 recomputed layers keep (1.7 GB) lets 7 layers stay whole; on a host without that
room, 27 recompute and 5 stay whole.

>>> kw = dict(layers=32, tokens=4096, per_token_layer=170_000, hidden_bytes=8192, budget=6e9, rebuilt_bytes=500_000_000)
>>> plan = plan_memory(**kw, host_bytes=16e9)
>>> plan.mode, plan.checkpointed, plan.keep_o
('offload', 25, True)
>>> plan = plan_memory(**kw, host_bytes=3e9)
>>> plan.mode, plan.checkpointed
('checkpoint', 27)
>>> [(p.mode, p.checkpointed) for p in (escalate(plan, 32), escalate(escalate(plan, 32), 32))]
[('checkpoint', 32), ('offload', 32)]
>>> escalate(MemoryPlan("offload", 8, 0.0), 16).checkpointed, escalate(MemoryPlan("offload", 16, 0.0), 16)
(12, None)
>>> plan_memory(layers=16, tokens=8192, per_token_layer=80_000, hidden_bytes=4096, budget=1e8, host_bytes=1e9).keep_o
False
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from honed.engine import derived, replay
from honed.model.families import find_family

log = logging.getLogger(__name__)


@dataclass
class MemoryPlan:
    mode: str  # none | checkpoint | offload
    checkpointed: int  # how many decoder layers recompute in backward
    estimate_gib: float  # planned activation memory on the GPU
    keep_o: bool = True  # recomputed layers also keep o_proj's output, so their rebuild is lean (engine.replay)
    # A rebuilt layer runs its MLP over all tokens at once instead of chunk by chunk (`engine.replay`):
    # chosen by `auto` when the budget has room for it after the layers are planned. Each chunk costs
    # the host a full pass of Python and launches, which a recompute-heavy step waits on.
    whole_mlp: bool = False
    # The first `host_mlp` layers (all of them kept, none recomputed) keep their MLP's gate/up activations
    # in pinned host memory: copied there in forward behind the compute, brought back ahead of their
    # backward (training.host_mlp_layers). What that frees on the GPU keeps more layers whole.
    host_mlp: int = 0


# What layer_activation_bytes counts falls short of what a layer keeps: on an H200, llama-8b QLoRA at
# 16,384 tokens with nothing recomputed kept ~5% more (attention's softmax statistics, the LoRA x·Aᵀ,
# the norms' fp32 scales and allocator rounding are not counted). 10% over keeps a margin. That was
# measured before the norms' and SwiGLU's outputs were derived again (`engine.derived`): the same
# uncounted bytes are ~7% of the smaller count.
CALIBRATION = 1.10


def layer_activation_bytes(config, dtype_bytes: int = 2, derived_saves: bool | None = None) -> int:
    """Bytes kept per token per decoder layer on honed's fused path (counted from what each node
    saves, then scaled by CALIBRATION to what was measured). `derived_saves` (default: whether
    `engine.derived` is on): the norms' and SwiGLU's outputs are derived again in backward, not kept."""
    derived_on = derived.ENABLED if derived_saves is None else derived_saves
    d = config.hidden_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * hd
    kv = config.num_key_value_heads * hd
    # norm inputs (2d) and, unless derived, outputs (2d); q/k/v after rope and attention out (+ its
    # contiguous copy), o input; the MLP's part (`_mlp_kept_values`); where per-head norms on q and k
    # keep views of the joint q/k/v output (Qwen3), that whole output. Small LoRA x·Aᵀ and fp32 norm scales ignored.
    norms = 2 * d if derived_on else 4 * d
    joint_qkv = q + 2 * kv if _has_qk_norms(config) else 0
    counted = dtype_bytes * (norms + 2 * q + 2 * kv + q + q + joint_qkv + _mlp_kept_values(config, derived_on))
    return int(counted * CALIBRATION)


def _has_qk_norms(config) -> bool:
    family = find_family(getattr(config, "model_type", None))
    return family is not None and bool(family.layout.qk_norms)


def _mlp_kept_values(config, derived_on: bool) -> int:
    """Values per token the MLP keeps: gate and up, and the product unless it is derived again."""
    return (2 if derived_on else 3) * config.intermediate_size


def host_mlp_bytes(config, dtype_bytes: int = 2) -> int:
    """Per token, what a `MemoryPlan.host_mlp` layer keeps on the host instead of the GPU: gate and up
    (counted as `layer_activation_bytes` counts them)."""
    return int(dtype_bytes * 2 * config.intermediate_size * CALIBRATION)


def backward_transient_bytes(config, dtype_bytes: int = 2) -> int:
    """Per token, what a layer's backward holds on top of what it kept: the SwiGLU gradients of gate
    and up (2f) and the hidden-size gradients flowing through it (a few d)."""
    return dtype_bytes * (2 * config.intermediate_size + 4 * config.hidden_size)


def rebuilt_layer_bytes(config, tokens: int, dtype_bytes: int = 2, whole_mlp: bool = False, derived_saves: bool | None = None) -> int:
    """What one recomputed layer holds while it is rebuilt and backpropagated: everything it keeps
    per token, except that its MLP runs a chunk of tokens at a time (`engine.replay`), or over all
    of them with `whole_mlp`; a chunk runs in backward, outside `engine.derived`, and keeps its product."""
    derived_on = derived.ENABLED if derived_saves is None else derived_saves
    f = config.intermediate_size
    kept_mlp = int(dtype_bytes * _mlp_kept_values(config, derived_on) * CALIBRATION)
    chunk_mlp = int(dtype_bytes * 3 * f * CALIBRATION)
    mlp_tokens = replay.deferred_chunk_tokens(f, tokens, whole_mlp)
    return tokens * (layer_activation_bytes(config, dtype_bytes, derived_on) - kept_mlp) + mlp_tokens * chunk_mlp


# Pinned memory cannot be swapped out, and a host that runs out kills the process outright: offloading
# takes at most this share of the host's available memory for what it keeps.
_HOST_SHARE = 0.5


def plan_memory(*, layers: int, tokens: int, per_token_layer: int, hidden_bytes: int, budget: float, forced: str | None = None,
                transient_per_token: int = 0, rebuilt_bytes: int | None = None, host_bytes: float | None = None,
                whole_mlp_rebuilt_bytes: int | None = None, host_mlp_layers: int = 0, host_mlp_per_token: int = 0) -> MemoryPlan:
    """`hidden_bytes`: one token's hidden state; a recomputed layer keeps two (its input and o_proj's
    output). `rebuilt_bytes`: one layer during its rebuild (default: all it would keep). `host_bytes`:
    host memory free for offloading (None: enough). `whole_mlp_rebuilt_bytes`: the same with the MLP
    over all tokens at once; `auto` takes that (`MemoryPlan.whole_mlp`) where the budget still has room.
    `host_mlp_layers`: how many of the first layers keep their gate/up activations (`host_mlp_per_token`
    bytes a token) in host memory, where they are kept layers (`MemoryPlan.host_mlp`; never when every
    layer recomputes), at most what half the host's memory holds."""
    budget = budget - tokens * transient_per_token  # the backward's working memory is never available to keep activations
    rebuilt = tokens * per_token_layer if rebuilt_bytes is None else rebuilt_bytes
    freed = tokens * host_mlp_per_token  # GPU bytes a host_mlp layer does not keep
    host = host_mlp_layers if forced in (None, "none") and freed > 0 else 0
    if host and host_bytes is not None:
        host = min(host, int(_HOST_SHARE * host_bytes // freed))
    while True:
        # Two layers' gate/up stay on the GPU on their way: copied out in forward (`_Offloader.save`'s lag
        # of one layer), or brought back for backward (the one in use and the one prefetched).
        credit = host * freed - (2 * freed if host else 0)
        plan = _plan_layers(layers, tokens, per_token_layer, hidden_bytes, budget + credit, forced, rebuilt, host_bytes)
        if host <= layers - plan.checkpointed:
            break
        host = layers - plan.checkpointed  # only kept layers send theirs to the host
    if host:
        plan = dataclasses.replace(plan, host_mlp=host, estimate_gib=plan.estimate_gib - credit / 2**30)
    if forced is None and plan.checkpointed and whole_mlp_rebuilt_bytes is not None:
        whole = plan.estimate_gib * 2**30 + whole_mlp_rebuilt_bytes - rebuilt
        if whole <= budget:
            return dataclasses.replace(plan, estimate_gib=whole / 2**30, whole_mlp=True)
    return plan


def _plan_layers(layers, tokens, per_token_layer, hidden_bytes, budget, forced, rebuilt, host_bytes) -> MemoryPlan:
    """Which layers recompute and where they keep their tensors (`plan_memory`, after the transient)."""
    full = layers * tokens * per_token_layer
    kept = 2 * tokens * hidden_bytes
    one_layer = tokens * per_token_layer
    if forced == "none" or (forced is None and full <= budget):
        return MemoryPlan("none", 0, full / 2**30)
    if forced == "offload":
        return offload_plan(layers, tokens, hidden_bytes, rebuilt, host_bytes)
    if forced is None:
        partial = _partial_offload_plan(layers, tokens, hidden_bytes, one_layer, rebuilt, budget, host_bytes)
        if partial is not None:
            return partial
    # recompute n layers: (layers - n) keep everything, n keep their input and o, one layer is rebuilt at a time
    saving = one_layer - kept
    n = layers if forced == "checkpoint" else min(layers, math.ceil((full + rebuilt - budget) / max(saving, 1)))
    est = (layers - n) * one_layer + n * kept + rebuilt
    if forced is None and est > budget:
        return offload_plan(layers, tokens, hidden_bytes, rebuilt, host_bytes)
    return MemoryPlan("checkpoint", n, est / 2**30)


def _partial_offload_plan(layers: int, tokens: int, hidden_bytes: int, one_layer: int, rebuilt: int, budget: float,
                          host_bytes: float | None) -> MemoryPlan | None:
    """Recompute the fewest layers m whose kept tensors (input and o_proj's output) wait on the host,
    so that the GPU holds only the other layers, two layers' kept tensors in flight (one copied back
    for its rebuild, the next prefetched) and the layer being rebuilt. None when every layer would
    have to recompute (the caller's choice between checkpoint and offload) or the host lacks the room
    for both kept tensors (`offload_keeps_o`)."""
    in_flight = 2 * (2 * tokens * hidden_bytes)
    m = max(1, math.ceil((layers * one_layer + in_flight + rebuilt - budget) / one_layer))
    if m >= layers or not offload_keeps_o(m, tokens, hidden_bytes, host_bytes):
        return None
    est = (layers - m) * one_layer + in_flight + rebuilt
    return MemoryPlan("offload", m, est / 2**30) if est <= budget else None


def offload_keeps_o(offloaded_layers: int, tokens: int, hidden_bytes: int, host_bytes: float | None) -> bool:
    """Whether offloaded layers keep o_proj's output beside their input: only when both fit in the
    host's share; o_proj's output saves one matmul of seven."""
    return host_bytes is None or 2 * offloaded_layers * tokens * hidden_bytes <= _HOST_SHARE * host_bytes


def offload_plan(layers: int, tokens: int, hidden_bytes: int, rebuilt: int, host_bytes: float | None) -> MemoryPlan:
    """Every layer recomputes and keeps its tensors in host memory (o_proj's output only where
    `offload_keeps_o`)."""
    return MemoryPlan("offload", layers, rebuilt / 2**30, offload_keeps_o(layers, tokens, hidden_bytes, host_bytes))


def available_host_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                         own_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """Host memory this process can still take: MemAvailable, or less where its memory cgroup (a
    container's limit) leaves less. None where neither can be read.

    Inside a container /proc/meminfo shows the whole machine; pinning up to that gets the process
    killed at the container's limit, so the cgroup's room counts too."""
    found = [v for v in (_meminfo_available(meminfo), cgroup_room_bytes(cgroup_root, own_cgroup)) if v is not None]
    return min(found) if found else None


def _meminfo_available(meminfo: Path) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2^63


def cgroup_room_bytes(root: Path, own_cgroup: Path) -> float | None:
    """What the memory cgroups above this process still let it use: the least, over every level from
    its own group up to the root that sets a limit, of that limit minus the level's working set (usage
    less the inactive file cache, which the kernel reclaims first). cgroup v2 first, then v1; None
    where no level sets a limit or nothing can be read. A limit often sits on a parent (a Slurm job,
    a Kubernetes pod) while the process's own group has none."""
    own = {"v2": "", "v1": ""}
    try:
        for line in own_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2: the one unified hierarchy
                own["v2"] = path.strip()
            elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
                own["v1"] = path.strip()
    except (OSError, ValueError):
        pass
    for base, relative, files in ((root, own["v2"], _V2_FILES), (root / "memory", own["v1"], _V1_FILES)):
        rooms = [room for folder in _levels(base, relative) if (room := _room(*(folder / name for name in files[:3]), files[3])) is not None]
        if rooms:
            return float(min(rooms))
    return None


_V2_FILES = ("memory.max", "memory.current", "memory.stat", "inactive_file")
_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file")


def _levels(base: Path, relative: str) -> list[Path]:
    """The cgroup folder of `relative` under `base`, then each parent up to `base` itself."""
    parts = [p for p in relative.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _room(limit_file: Path, usage_file: Path, stat_file: Path, inactive_key: str) -> float | None:
    try:
        text = limit_file.read_text().strip()
        if text == "max" or int(text) >= _UNLIMITED:
            return None
        usage = int(usage_file.read_text().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in stat_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return float(max(0, int(text) - (usage - inactive)))


def usable_gpu_bytes(device: torch.device) -> int:
    """What this process may still allocate on `device`: the card's free memory, or less where the
    process was capped (`torch.cuda.set_per_process_memory_fraction`, e.g. to share a card)."""
    index = device.index if device.index is not None else torch.cuda.current_device()  # the fraction getter wants an index
    free, total = torch.cuda.mem_get_info(index)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # not in older torch
    fraction = get_fraction(index) if get_fraction is not None else 1.0
    if fraction >= 1.0:
        return free
    return max(0, min(free, int(fraction * total) - torch.cuda.memory_reserved(index)))


def escalate(plan: MemoryPlan, layers: int) -> MemoryPlan | None:
    """The next plan after `plan` ran out of memory: recompute a quarter more of the layers (keeping
    what they keep where they did: GPU or host), then all of them, then offload what they keep too;
    None when offloading every layer already did not fit."""
    if plan.mode == "offload" and plan.checkpointed >= layers:
        return None
    if plan.mode == "checkpoint" and plan.checkpointed >= layers:
        return MemoryPlan("offload", layers, plan.estimate_gib)
    more = min(layers, plan.checkpointed + max(1, math.ceil(layers / 4)))
    return MemoryPlan("offload" if plan.mode == "offload" else "checkpoint", more, plan.estimate_gib, plan.keep_o,  # MLP in chunks again
                      host_mlp=min(plan.host_mlp, layers - more))


class _Offloader:
    """Moves what recomputed layers keep (their input, and o_proj's output for `engine.replay`), and the
    gate/up activations of `MemoryPlan.host_mlp` layers, to pinned CPU memory on a side stream, and back
    ahead of need.

    Forward: the copy to CPU overlaps the next layer's compute. Backward: when layer i is rebuilt,
    layer i-1's tensors are already on their way back, so the copy hides behind layer i's backward.
    Pinned buffers are reused between steps (allocating pinned memory is slow)."""

    def __init__(self):
        self.buffers: dict[tuple[int, str], torch.Tensor] = {}
        self.pending: dict[tuple[int, str], tuple[torch.Tensor, torch.cuda.Event]] = {}
        self.in_flight: list[tuple[int, torch.Tensor, torch.cuda.Event]] = []  # (layer, source, copy done)
        self.stream = None

    def save(self, key: tuple[int, str], tensor: torch.Tensor, lag: int = 0) -> torch.Tensor:
        """Start copying `tensor` to its pinned buffer; returns the buffer. Before that, the compute
        waits for the copies of layers older than `lag` layers before this one (`settle`): with 0 each
        copy has until the next layer saves; a copy slower than a layer's compute (gate/up,
        `MemoryPlan.host_mlp`) takes 1, at the cost of one more layer's sources held meanwhile."""
        if not tensor.is_cuda:
            return tensor
        buf = self.buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = self.buffers[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        if self.stream is None:
            self.stream = torch.cuda.Stream(tensor.device)
        current = torch.cuda.current_stream(tensor.device)
        self.settle(current, keep_from_layer=key[0] - lag)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            buf.copy_(tensor, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        # The source stays referenced until the compute stream has waited for its copy (`settle`), so
        # the allocator cannot hand its memory to a later kernel before the copy has read it. This is
        # what record_stream would do, except that inside a CUDA graph capture (engine.graphs)
        # record_stream keeps the memory out of reuse until the capture ends: gigabytes more.
        self.in_flight.append((key[0], tensor, copied))
        return buf

    def settle(self, stream, keep_from_layer: int | None = None) -> None:
        """Make `stream` wait for the copies to the host started so far (but those of layers from
        `keep_from_layer` on: the one being saved would make the compute wait for its own copy) and let
        their sources go. The wait lands behind work already queued, by when the copies are long done."""
        keep = []
        for entry in self.in_flight:
            if keep_from_layer is not None and entry[0] >= keep_from_layer:
                keep.append(entry)
            else:
                stream.wait_event(entry[2])
        self.in_flight = keep

    def prefetch(self, index: int, device: torch.device) -> None:
        """Start bringing back everything layer `index` kept."""
        if self.stream is None:
            return
        current = torch.cuda.current_stream(device)
        for key, buf in self.buffers.items():
            if key[0] != index or key in self.pending:
                continue
            # Fork from the compute stream: inside a CUDA graph capture (engine.graphs) a copy on a
            # stream that has not joined the capture would run once now instead of at every replay.
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                gpu = buf.to(device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            self.pending[key] = (gpu, done)

    def load(self, key: tuple[int, str], kept: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not kept.is_pinned():
            return kept
        if key not in self.pending:
            self.prefetch(key[0], device)
        gpu, done = self.pending.pop(key)
        current = torch.cuda.current_stream(device)
        self.settle(current)
        current.wait_event(done)
        # No record_stream: `gpu` came from the side stream's memory, which only the next prefetch
        # reuses, and every prefetch first waits for the compute stream (above).
        return gpu


class _Recompute(torch.autograd.Function):
    """Runs a layer without keeping its activations; backward rebuilds it from the kept input (and,
    with `keep_o`, o_proj's kept output: `engine.replay`) and backpropagates through it."""

    @staticmethod
    def forward(ctx, hidden, run, layer, index, offloader, keep_o):
        ctx.run, ctx.layer, ctx.device, ctx.index, ctx.offloader = run, layer, hidden.device, index, offloader
        with torch.no_grad(), (replay.capturing(layer) if keep_o else contextlib.nullcontext({"o": None})) as found:
            out = run(hidden)
        ctx.kept, ctx.kept_o = _keep(ctx, (index, "input"), hidden.detach()), None
        if found["o"] is not None:
            ctx.kept_o = _keep(ctx, (index, "o"), found["o"])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, o = _fetch(ctx, (ctx.index, "input"), ctx.kept), _fetch(ctx, (ctx.index, "o"), ctx.kept_o)
        if ctx.offloader is not None and ctx.index > 0:
            ctx.offloader.prefetch(ctx.index - 1, ctx.device)
        hidden = hidden.detach().requires_grad_(True)
        with torch.enable_grad(), replay.replaying(ctx.layer, o), derived.derived_saves():
            out = ctx.run(hidden)
        torch.autograd.backward(out, grad_out)
        ctx.kept = ctx.kept_o = ctx.run = ctx.layer = None
        return hidden.grad, None, None, None, None, None


def _keep(ctx, key, tensor):
    return ctx.offloader.save(key, tensor) if ctx.offloader is not None else tensor


def _fetch(ctx, key, kept):
    if kept is None or ctx.offloader is None:
        return kept
    return ctx.offloader.load(key, kept, ctx.device)


def _wrap_layer(layer, index: int, offloader: _Offloader | None, keep_o: bool):
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
        return _Recompute.apply(hidden_states, run, self, index, offloader, keep_o)

    layer.forward = types.MethodType(forward, layer)


_OFFLOADER_ATTR = "_honed_offloader"


def _offloaders(decoder_layers) -> list[_Offloader]:
    """The offloaders `apply_memory_plan` gave these layers, each once (one plan shares one)."""
    found = {id(o): o for o in (getattr(layer, _OFFLOADER_ATTR, None) for layer in decoder_layers) if o is not None}
    return list(found.values())


def join_offload_copies(decoder_layers) -> None:
    """Make the current stream wait for every copy the layers' offloaders started (a CUDA graph
    capture must join the streams it forked before it ends) and let the copies' sources go."""
    for offloader in _offloaders(decoder_layers):
        if offloader.stream is not None:
            current = torch.cuda.current_stream(offloader.stream.device)
            current.wait_stream(offloader.stream)
            offloader.in_flight.clear()


def reset_offload_copies(decoder_layers) -> None:
    """Forget the copies the layers' offloaders have in flight or prefetched (after a failed CUDA
    graph capture: the events recorded inside it cannot be waited on outside it)."""
    for offloader in _offloaders(decoder_layers):
        offloader.in_flight.clear()
        offloader.pending.clear()


def _wrap_host_mlp(layer, index: int, offloader: _Offloader, sends: bool, brings_back_previous: bool):
    """A kept layer of `MemoryPlan.host_mlp`: its MLP's gate/up activations go to the host (`sends`), and
    when the gradient reaches its output (its backward starts) the previous layer's start coming back
    (`brings_back_previous`), so that they are on the GPU by the time that layer's backward needs them."""
    inner = layer.forward

    def forward(self, hidden_states, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return inner(hidden_states, *args, **kwargs)
        with replay.mlp_on_host(getattr(self, "mlp", None), offloader, index) if sends else contextlib.nullcontext():
            out = inner(hidden_states, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        if brings_back_previous and first.requires_grad:
            device = first.device
            first.register_hook(lambda grad: offloader.prefetch(index - 1, device))
        return out

    layer.forward = types.MethodType(forward, layer)


def apply_memory_plan(decoder_layers, plan: MemoryPlan) -> None:
    """Make the last `plan.checkpointed` decoder layers recompute in backward (layers are equally
    sized, so which ones does not change the peak); offload mode also keeps their tensors on the CPU.
    The first `plan.host_mlp` layers keep their gate/up activations on the CPU."""
    offloader = _Offloader() if plan.mode == "offload" else None
    n = len(decoder_layers)
    host = min(plan.host_mlp, n - plan.checkpointed)
    host_offloader = (offloader or _Offloader()) if host else None  # one side stream for all the copies
    for i, layer in enumerate(decoder_layers):
        setattr(layer, _OFFLOADER_ATTR, offloader if i >= n - plan.checkpointed else host_offloader if i < host else None)
        # A plan can be applied again (after an out-of-memory escalation): start from the layer's own forward.
        if not hasattr(layer, "_honed_unplanned_forward"):
            layer._honed_unplanned_forward = layer.forward
        layer.forward = layer._honed_unplanned_forward
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            replay.set_whole_mlp(mlp, plan.whole_mlp)
        if i >= n - plan.checkpointed:
            _wrap_layer(layer, i, offloader, plan.keep_o)
        if host and (i < host or i == host < n):
            _wrap_host_mlp(layer, i, host_offloader, sends=i < host, brings_back_previous=0 < i <= host)
