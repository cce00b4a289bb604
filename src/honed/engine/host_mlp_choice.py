"""`training.host_mlp_layers: auto`: how many layers keep gate/up in host memory, measured on this GPU.

Each layer whose MLP activations wait in host memory (`MemoryPlan.host_mlp`) frees GPU memory that
`memory: auto` spends on keeping more layers whole, so fewer layers are rebuilt in backward. Its copy
to the host has two layers' forward to finish in (the offloader lets one more layer's copy run
behind it); a slower link makes the forward wait. So, where the plan without it recomputes layers,
the fused path measures on this GPU one layer's gate/up copy to pinned memory and the decoder's
forward over the run's tokens, plans memory for every count of host layers, and estimates each:

    recomputed layers × rebuild + host layers × max(0, copy − 2 × layer forward)

A lean rebuild (`engine.replay`) runs a layer's forward again but for o_proj and down_proj; its time is
taken as the layer's forward times the share of its projection work those two leave. The count with
the shortest estimate wins (ties: the fewer host layers). Every rank of a distributed run takes rank 0's.

>>> plans = {0: MemoryPlan("offload", 20, 0.0), 8: MemoryPlan("offload", 16, 0.0, host_mlp=8),
...          16: MemoryPlan("offload", 12, 0.0, host_mlp=16)}
>>> choose(plans, copy_ms=4.0, layer_forward_ms=2.5, rebuild_ms=1.6).layers  # copies hide: 12 · 1.6
16
>>> choose(plans, copy_ms=9.0, layer_forward_ms=2.5, rebuild_ms=1.6).layers  # each copy stalls 4 ms
0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from honed.engine.fp8_choice import median_ms
from honed.engine.memory import MemoryPlan
from honed.utils.ranks import rank0_int


@dataclass(frozen=True)
class HostMlpChoice:
    """What was measured, each candidate's estimate, and the number of host layers chosen."""

    layers: int  # layers whose gate/up wait in host memory
    copy_ms: float  # one layer's gate/up to pinned host memory
    layer_forward_ms: float  # one decoder layer's forward at the run's tokens
    rebuild_ms: float  # one lean rebuild (estimated from the forward)
    estimated_ms: dict[int, float]  # host layers → recompute and stall time a step

    def describe(self) -> dict:
        return {"layers": self.layers, "copy_ms": self.copy_ms, "layer_forward_ms": self.layer_forward_ms, "rebuild_ms": self.rebuild_ms,
                "estimated_ms": {str(k): v for k, v in self.estimated_ms.items()}}


def estimated_ms(plan: MemoryPlan, copy_ms: float, layer_forward_ms: float, rebuild_ms: float) -> float:
    """What a step spends rebuilding recomputed layers and waiting for gate/up copies (module docstring)."""
    return plan.checkpointed * rebuild_ms + plan.host_mlp * max(0.0, copy_ms - 2 * layer_forward_ms)


def choose(plans: dict[int, MemoryPlan], copy_ms: float, layer_forward_ms: float, rebuild_ms: float) -> HostMlpChoice:
    """The plan of shortest estimate among `plans` (asked host layers → plan), fewer host layers on a tie."""
    estimates = {asked: round(estimated_ms(plan, copy_ms, layer_forward_ms, rebuild_ms), 3) for asked, plan in plans.items()}
    best = min(estimates, key=lambda asked: (estimates[asked], plans[asked].host_mlp))
    return HostMlpChoice(plans[best].host_mlp, round(copy_ms, 4), round(layer_forward_ms, 4), round(rebuild_ms, 4), estimates)


def rebuild_share(config) -> float:
    """The share of a layer's projection multiply-adds a lean rebuild runs again: all but o_proj's and down_proj's."""
    d, f = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    qkv, o, gate_up, down = d * (q + 2 * kv), q * d, 2 * d * f, f * d
    return (qkv + gate_up) / (qkv + o + gate_up + down)


def measure_copy_ms(nbytes: int, device: torch.device) -> float:
    """Milliseconds to copy `nbytes` from the GPU to pinned host memory on a side stream, as the offloader does."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        return median_ms(lambda: target.copy_(source, non_blocking=True))


def measure_layer_forward_ms(lm, tokens: int, max_seq_length: int, device: torch.device, dtype: torch.dtype | None) -> float:
    """One decoder layer's forward at the run's tokens: the decoder's forward without grad over random
    ids in rows of max_seq_length, divided by its layers."""
    seq = max(1, min(max_seq_length, tokens))
    ids = torch.randint(0, lm.config.vocab_size, (max(1, tokens // seq), seq), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def forward():
        with torch.no_grad(), autocast:
            lm.model(input_ids=ids, use_cache=False)

    return median_ms(forward) / len(lm.model.layers)


def agreed_across_ranks(layers: int, device: torch.device) -> int:
    """Rank 0's count for every rank of a distributed run (each measured its own GPU)."""
    return rank0_int(layers, device)
