"""The RESULT keys of a real-data (`--lengths`) run, shared with benchmarks/packed_peers.py so every
stack counts alike."""

from __future__ import annotations

from honed.bench.data import BenchData, attended_length, length_stats, throughput, trained_tokens, weighted_mean_loss
from honed.bench.shapes import flops_per_token
from honed.bench.timing import memory_fields


def packed_result_fields(data: BenchData, timed_batches: list, timed_losses: list[float], seconds: float, model_config, peak_tflops: float,
                         pool_bytes: int = 0) -> dict:
    """The RESULT keys of a real-data run, shared with benchmarks/packed_peers.py so every stack counts alike."""
    flow = throughput(timed_batches, seconds)
    lengths = data.timed_lengths()
    flops = flops_per_token(model_config, attended_length(lengths))
    return dict(
        lengths_stats=length_stats(lengths), samples=len(lengths), rows=sum(len(mb) for mb in data.timed),
        micro_batches=len(timed_batches), layout_rows=sum(b["input_ids"].shape[0] for b in timed_batches),
        drawn=data.drawn, data_sha=data.fingerprint(), **flow, step_s=round(seconds / len(timed_batches), 4), **memory_fields(pool_bytes),
        mfu_lora_pct=round(100 * flow["effective_tokens_per_s"] * flops / peak_tflops / 1e12, 1),
        loss_mean=round(weighted_mean_loss(timed_losses, [trained_tokens(b) for b in timed_batches]), 4),
    )
