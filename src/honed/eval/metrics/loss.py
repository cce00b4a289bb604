"""Held-out loss and perplexity from per-batch sums, weighted by tokens (not by batch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class LossResult:
    """`mean_loss` is nats per target token; `perplexity` = exp(mean_loss) (inf on overflow)."""

    mean_loss: float
    perplexity: float
    n_tokens: int
    n_batches: int


def loss_and_perplexity(batches: Iterable[tuple[float, int]]) -> LossResult:
    """Token-weighted mean loss and perplexity from (sum_loss, n_tokens) per batch.

    `sum_loss` is the summed (not averaged) cross-entropy over the batch's `n_tokens` target
    tokens; torch scalars are accepted. Averaging per-batch means instead would over-weight
    short batches. Raises ValueError on no batches, no tokens, or negative/non-finite input.

    >>> r = loss_and_perplexity([(6.0, 3), (2.0, 1)])
    >>> r.mean_loss, round(r.perplexity, 4), r.n_tokens
    (2.0, 7.3891, 4)
    """
    total_loss = 0.0
    total_tokens = 0
    n_batches = 0
    for i, (sum_loss, n_tokens) in enumerate(batches):
        sum_loss, count = float(sum_loss), int(n_tokens)
        if count < 0 or not math.isfinite(sum_loss):
            raise ValueError(f"batch {i} has sum_loss={sum_loss}, n_tokens={count}: the loss must "
                             "be finite and the token count >= 0 (check the loss mask)")
        total_loss += sum_loss
        total_tokens += count
        n_batches += 1
    if n_batches == 0:
        raise ValueError("no batches to average: the evaluation set produced no batches "
                         "(is it empty, or were all samples filtered out?)")
    if total_tokens == 0:
        raise ValueError(f"{n_batches} batches but 0 target tokens: every label is masked; "
                         "check the chat template's assistant mask")
    mean = total_loss / total_tokens
    try:
        perplexity = math.exp(mean)
    except OverflowError:
        perplexity = math.inf
    return LossResult(mean, perplexity, total_tokens, n_batches)
