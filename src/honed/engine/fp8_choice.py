"""`precision: fp8` under `memory: auto`: fp8 bases only where they make the step faster, measured.

fp8 bases can buy speed in two ways: each base matmul may run faster on fp8 tensor cores, and the
bases take half the memory, which `auto` spends on keeping activations (fewer layers recompute).
Both can fail. Rowwise-scaled fp8 matmuls, with the quantisation of every input and gradient and a
transposed copy of W for each dx, can take longer than bf16's plain matmul at a run's shapes; and
where bf16 already keeps every activation the freed memory buys nothing. Then an fp8 run is slower
than a bf16 one on the same card.

So before converting, the fused path measures on this GPU, at the run's tokens per micro-batch, one
decoder layer's base matmuls both ways (bf16: each projection on its own, as `engine.grouped`
runs dense bases; fp8: each sibling group as one matrix, as it stores them) and causal attention's
forward, plans memory both ways (fp8 with the bytes its bases free), and estimates each step:

    layers × (forward + dx of every base) + recomputed layers × (the rebuild's base forwards + attention)

A lean rebuild (`engine.replay`) runs every base's forward again except down_proj's, and o_proj's
where its output was kept. Everything else a step does (LoRA, norms, attention's backward, the loss,
the optimizer) is the same work in both and cancels. The bases become fp8 when its estimate is not
above bf16's; otherwise they stay bf16 and the run says why.

The choice is made once per run: in a distributed run every rank takes rank 0's, and a resumed run
takes the one its checkpoint recorded (`EngineSettings.fp8_bases`), so that it trains the same
numbers as an uninterrupted run. It is made only where `auto` is free to spend the card: with
`training.memory_budget_gib` or a fixed `training.memory` mode fp8 is kept as asked (its use is then
memory), and `HONED_FP8_CHOICE=0` keeps it always.

>>> plan = lambda n: MemoryPlan("checkpoint" if n else "none", n, 0.0)
>>> bf16 = BaseTimes(forward_ms=2.0, dx_ms=2.0, rebuild_forward_ms=1.5, o_forward_ms=0.2)
>>> fp8 = BaseTimes(forward_ms=2.4, dx_ms=2.4, rebuild_forward_ms=1.8, o_forward_ms=0.25)
>>> choose(32, {"bf16": plan(0), "fp8": plan(0)}, {"bf16": bf16, "fp8": fp8}, attention_ms=0.5).precision
'bf16'
>>> choice = choose(32, {"bf16": plan(20), "fp8": plan(4)}, {"bf16": bf16, "fp8": fp8}, attention_ms=0.5)
>>> choice.precision, choice.step_ms  # bf16: 32·4 + 20·2.0 = 168; fp8: 32·4.8 + 4·2.3 = 162.8
('fp8', {'bf16': 168.0, 'fp8': 162.8})
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from honed.engine import replay
from honed.engine.fp8 import fp8_dgrad, fp8_linear, quantize_weight_rowwise, storable_in_fp8
from honed.engine.layout import SIBLINGS
from honed.engine.memory import MemoryPlan
from honed.utils.ranks import rank0_int

ENABLED = os.environ.get("HONED_FP8_CHOICE", "1") != "0"
# Matmul time grows with the rows; measuring at most this many keeps the probe's own inputs small on a
# long-sequence run (a 131k-token dy for gate/up alone would be 7.5 GB) and scales the times up.
MEASURE_TOKENS = 8192
_WARMUP, _REPEATS = 2, 5


@dataclass(frozen=True)
class BaseTimes:
    """One decoder layer's frozen-base matmuls at the run's tokens, in milliseconds."""

    forward_ms: float  # x Wᵀ of every base
    dx_ms: float  # dy W of every base (frozen: no weight gradient)
    # A lean rebuild (`engine.replay`) runs every base's forward again except down_proj's (the deferred
    # MLP never needs its output) and o_proj's (its output was kept): this is that; o_proj's own comes
    # back when the plan could not keep its output.
    rebuild_forward_ms: float
    o_forward_ms: float = 0.0


@dataclass(frozen=True)
class Fp8Choice:
    """What was measured, what each precision's step was estimated at, and the bases chosen."""

    precision: str  # "fp8" or "bf16": what the LoRA bases are stored and multiplied in
    step_ms: dict[str, float]  # each precision's estimated base-matmul and recompute time a step
    recomputed_layers: dict[str, int]  # each precision's memory plan
    times: dict[str, BaseTimes]
    attention_ms: float

    def describe(self) -> dict:
        # The plans behind the estimates were made before the input embeddings could move to the host:
        # the run's final plan (its memory_plan) may recompute fewer layers.
        return {"bases": self.precision, "estimated_step_ms": self.step_ms, "recomputed_layers_planned_at_choice": self.recomputed_layers,
                "layer_base_ms": {k: dataclasses.asdict(v) for k, v in self.times.items()}, "attention_forward_ms": self.attention_ms}


def agreed_across_ranks(precision: str, device: torch.device) -> str:
    """In a distributed run, rank 0's choice for every rank: each measures on its own GPU, timings
    differ a little, and ranks whose bases differ would train different models under one average."""
    return "fp8" if rank0_int(1 if precision == "fp8" else 0, device) else "bf16"


def estimated_step_ms(layers: int, plan: MemoryPlan, times: BaseTimes, attention_ms: float) -> float:
    """What a step spends in base matmuls and in rebuilding recomputed layers (module docstring)."""
    rebuild = times.rebuild_forward_ms + (0.0 if plan.keep_o else times.o_forward_ms)
    return layers * (times.forward_ms + times.dx_ms) + plan.checkpointed * (rebuild + attention_ms)


def choose(layers: int, plans: dict[str, MemoryPlan], times: dict[str, BaseTimes], attention_ms: float) -> Fp8Choice:
    """fp8 unless bf16's estimated step is shorter (a tie keeps what the user asked for: fp8)."""
    step = {p: round(estimated_step_ms(layers, plans[p], times[p], attention_ms), 3) for p in ("bf16", "fp8")}
    return Fp8Choice("fp8" if step["fp8"] <= step["bf16"] else "bf16", step, {p: plans[p].checkpointed for p in plans}, times, attention_ms)


def layer_bases(decoder_layer) -> list[tuple[str, list]]:
    """The fusable LoRA projections of one decoder layer whose bases fp8 would convert, in the sets
    fp8 stores (the siblings q/k/v and gate/up as one matrix each, where all of them are LoRA
    projections; any other alone), each with its role in a lean rebuild: "rebuilt" (its forward runs
    again), "o" (o_proj: again only when its output was not kept), "not rebuilt" (down_proj)."""
    o_proj = replay.attention_output_projection(decoder_layer)
    down_proj = getattr(getattr(decoder_layer, "mlp", None), "down_proj", None)
    found, grouped = [], set()
    for parent in decoder_layer.modules():
        for names in SIBLINGS:
            members = [getattr(parent, n, None) for n in names]
            if all(m is not None and storable_in_fp8(m) for m in members) and len({m.base_layer.in_features for m in members}) == 1:
                found.append(("rebuilt", members))
                grouped.update(id(m) for m in members)
    for m in decoder_layer.modules():
        if storable_in_fp8(m) and id(m) not in grouped:
            found.append(("o" if m is o_proj else "not rebuilt" if m is down_proj else "rebuilt", [m]))
    return found


def fp8_freed_bytes(model) -> int:
    """GPU bytes converting the bases to fp8 frees: each base keeps one byte a weight and an fp32 scale a row."""
    freed = 0
    for module in model.modules():
        if storable_in_fp8(module):
            w = module.base_layer.weight
            freed += w.numel() * (w.element_size() - 1) - 4 * w.shape[0]
    return freed


def median_ms(fn) -> float:
    """fn()'s GPU time in milliseconds: the median of five CUDA-event timings after two warm-up calls."""
    for _ in range(_WARMUP):  # the first fp8 call compiles its quantisers (engine.compile)
        fn()
    times = []
    for _ in range(_REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_base_matmuls(weights: list[torch.Tensor], rows: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """(forward, dx) milliseconds of frozen bases that read one input, over `rows` random rows: in bf16
    one matmul each, dx reading each one's columns of one dy (as `grouped.DenseBases` runs them), and in
    fp8 as one quantised matrix (as `engine.fp8` stores a group)."""
    weights = [w.to(device=device, dtype=torch.bfloat16) for w in weights]
    x = torch.randn(rows, weights[0].shape[1], device=device, dtype=torch.bfloat16)
    dy_joint = torch.randn(rows, sum(w.shape[0] for w in weights), device=device, dtype=torch.bfloat16)
    dys = dy_joint.split([w.shape[0] for w in weights], dim=1)
    w_fp8, scale = quantize_weight_rowwise(torch.cat(weights))
    with torch.no_grad():
        return {
            "bf16": (median_ms(lambda: [x @ w.t() for w in weights]), median_ms(lambda: [dy @ w for dy, w in zip(dys, weights)])),
            "fp8": (median_ms(lambda: fp8_linear(x, w_fp8, scale)), median_ms(lambda: fp8_dgrad(dy_joint, w_fp8, scale))),
        }


def measure_base_times(decoder_layer, tokens: int, device: torch.device) -> dict[str, BaseTimes]:
    """`BaseTimes` of this layer's convertible bases in bf16 and in fp8, on `device` (a CUDA GPU with fp8
    tensor cores), from the layer's own weights and random inputs of min(tokens, MEASURE_TOKENS) rows,
    scaled to `tokens`."""
    rows = min(tokens, MEASURE_TOKENS)
    scale_up = tokens / rows
    totals = {p: {"forward": 0.0, "dx": 0.0, "rebuilt": 0.0, "o": 0.0} for p in ("bf16", "fp8")}
    for role, members in layer_bases(decoder_layer):
        for p, (forward, dx) in time_base_matmuls([m.base_layer.weight for m in members], rows, device).items():
            totals[p]["forward"] += forward * scale_up
            totals[p]["dx"] += dx * scale_up
            if role in ("rebuilt", "o"):
                totals[p][role] += forward * scale_up
    return {p: BaseTimes(round(t["forward"], 4), round(t["dx"], 4), round(t["rebuilt"], 4), round(t["o"], 4)) for p, t in totals.items()}


def measure_attention_ms(config, tokens: int, max_seq_length: int, device: torch.device) -> float:
    """Causal attention's forward (SDPA, bf16) over `tokens` in rows of max_seq_length, in milliseconds.
    Measured on at most MEASURE_TOKENS tokens and scaled by tokens × row length (its cost per row goes
    with the square of the row's length)."""
    seq = max(1, min(max_seq_length, tokens))
    seq_measured = min(seq, MEASURE_TOKENS)
    rows = max(1, min(tokens, MEASURE_TOKENS) // seq_measured)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    q = torch.randn(rows, heads, seq_measured, head_dim, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(rows, kv_heads, seq_measured, head_dim, device=device, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads))
    return round(ms * tokens * seq / (rows * seq_measured**2), 4)
