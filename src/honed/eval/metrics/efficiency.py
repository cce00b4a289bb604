"""Latency percentiles and throughput of generation."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def latency_percentiles(seconds: Sequence[float],
                        percentiles: Sequence[float] = (50, 95)) -> dict[str, float]:
    """{"p50": ..., "p95": ...} of per-request latencies, linear interpolation (numpy's
    default), plus "mean" and "n".

    >>> {k: round(v, 6) for k, v in latency_percentiles([0.1, 0.2, 0.3, 0.4, 1.0]).items()}
    {'p50': 0.3, 'p95': 0.88, 'mean': 0.4, 'n': 5}
    """
    values = np.asarray(list(seconds), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latencies given: time at least one request")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("latencies must be finite and >= 0 seconds")
    result: dict[str, float] = {
        f"p{p:g}": float(np.percentile(values, p)) for p in percentiles
    }
    result["mean"] = float(values.mean())
    result["n"] = int(values.size)
    return result


def tokens_per_second(n_tokens: int | Sequence[int], seconds: float | Sequence[float]) -> float:
    """Throughput: total generated tokens over total seconds (per-request lists or totals).

    Totals over totals, not the mean of per-request rates, which over-weights short requests.

    >>> tokens_per_second([100, 300], [1.0, 3.0]), tokens_per_second(50, 0.5)
    (100.0, 100.0)
    """
    total_tokens = sum(n_tokens) if isinstance(n_tokens, Sequence) else n_tokens
    total_seconds = sum(seconds) if isinstance(seconds, Sequence) else seconds
    if total_seconds <= 0:
        raise ValueError(f"total time must be > 0 seconds, got {total_seconds}")
    return float(total_tokens) / float(total_seconds)
