"""Teacher-forced scoring: validation loss on the references, and label log-likelihoods.

Both tokenize with `honed.data.tokenize.tokenize_conversation` — the one place the loss mask is
decided — with `train_on="last_assistant"`, so exactly the reference answer (and its end-of-turn
token) is scored, as in training; the prompt and earlier turns are context only.

>>> loss, per_sample, problems = reference_losses(bot, samples)          # doctest: +SKIP
>>> label_log_likelihoods(bot, samples, ["positive", "negative"])[0]     # doctest: +SKIP
{'positive': -0.41, 'negative': -3.2}
"""

from __future__ import annotations

from typing import Sequence

import torch

from honed.data.conversation import Conversation, Message
from honed.data.tokenize import tokenize_conversation
from honed.errors import DataError
from honed.eval.metrics import LossResult, loss_and_perplexity
from honed.eval.sharding import EvalShard, loss_sums


@torch.no_grad()
def _summed_losses(bot, conversations: Sequence[Conversation], batch_size: int, enable_thinking: bool | None,
                   shard: EvalShard | None = None) -> list[tuple[float, int] | str]:
    """(summed loss, scored tokens) per conversation, or why it could not be scored (every rank
    tokenizes all; each scores its share of the batches)."""
    out: list[tuple[float, int] | str] = [""] * len(conversations)
    tokenized = []
    for i, conv in enumerate(conversations):
        try:
            tokenized.append((i, tokenize_conversation(conv, bot.tokenizer, bot.template, train_on="last_assistant",
                                                        enable_thinking=enable_thinking)))
        except DataError as err:  # e.g. a role the template cannot render: that sample only
            out[i] = str(err)
    sums = loss_sums(bot.model, [s for _, s in tokenized], device=bot.device, pad_id=bot.tokenizer.pad_token_id, batch_size=batch_size,
                     shard=shard)
    for (i, _), result in zip(tokenized, sums):
        out[i] = result
    return out


def reference_losses(bot, samples, *, batch_size: int = 8, enable_thinking: bool | None = None,
                     shard: EvalShard | None = None) -> tuple[LossResult | None, dict[int, float], list[tuple[int, str]]]:
    """Token-weighted loss/perplexity over the samples' reference answers.

    Returns (aggregate or None when nothing could be scored, {sample index: mean loss of that
    answer}, [(sample index, why it was skipped)]). Under torchrun (`shard`) each rank scores its
    share of the batches and every rank returns the whole result.
    """
    convs, owners, problems = [], [], []
    for sample in samples:
        conv = sample.with_reference()
        if conv is None:
            problems.append((sample.index, "missing reference"))
        else:
            convs.append(conv)
            owners.append(sample.index)
    per_sample: dict[int, float] = {}
    batches: list[tuple[float, int]] = []
    for index, result in zip(owners, _summed_losses(bot, convs, batch_size, enable_thinking, shard)):
        if isinstance(result, str) or result[1] == 0:
            problems.append((index, result if isinstance(result, str) else "no answer tokens to score"))
            continue
        per_sample[index] = result[0] / result[1]
        batches.append(result)
    return (loss_and_perplexity(batches) if batches else None), per_sample, problems


def label_log_likelihoods(bot, samples, labels: Sequence[str], *, batch_size: int = 8,
                          enable_thinking: bool | None = None, shard: EvalShard | None = None) -> list[dict[str, float] | None]:
    """Per sample, the summed log-probability of each label given as the whole answer.

    These are the scores AUC-ROC is computed from (softmax over labels), independent of what
    greedy decoding happened to print. None for a sample whose labels could not be scored.
    """
    convs = [Conversation([*s.conversation.messages, Message("assistant", label)], source=s.source)
             for s in samples for label in labels]
    results = _summed_losses(bot, convs, batch_size, enable_thinking, shard)
    rows: list[dict[str, float] | None] = []
    for k in range(len(samples)):
        chunk = results[k * len(labels) : (k + 1) * len(labels)]
        if any(isinstance(r, str) for r in chunk):
            rows.append(None)
        else:
            rows.append({label: -total for label, (total, _) in zip(labels, chunk)})
    return rows
