"""Preference evaluation: does the model give the chosen answer a higher log-prob than the rejected one?

For every pair of a preference file (any layout `honed.data.preference` reads), both answers are
scored teacher-forced after the same prompt (the scope prompt first, as in training): the summed
log-prob of the answer's tokens and their end-of-turn marker. Reported per model:

- `accuracy`: share of pairs whose chosen answer has the higher summed log-prob;
- `mean_margin`: mean of log p(chosen) - log p(rejected) (nats);
- `length_normalised_accuracy`: the same comparison on mean per-token log-probs.

`honed eval ... --preference pairs.jsonl` adds these for the tuned model and each baseline.

>>> pairs, skipped = load_eval_pairs("pairs.jsonl", system_prompt="Lab questions only.")   # doctest: +SKIP
>>> preference_metrics(bot, pairs)["accuracy"]                                              # doctest: +SKIP
0.9
"""

from __future__ import annotations

from honed.data.dataset import inject_system_prompt
from honed.data.preference import PreferencePair, to_preference_pair
from honed.data.preference_batch import tokenize_pair
from honed.data.readers import read_records
from honed.errors import DataError


def load_eval_pairs(path: str, *, system_prompt: str | None = None, max_pairs: int | None = None) -> list[PreferencePair]:
    """Read a preference file; a bad record is an error naming file:line (as in training)."""
    pairs = []
    for where, record in read_records(path):
        if max_pairs and len(pairs) >= max_pairs:
            break
        pair = to_preference_pair(record, where)
        if system_prompt:
            pair.prompt = inject_system_prompt(pair.chosen_conversation(), system_prompt).messages[: -len(pair.chosen)]
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs


def pair_margins(bot, pairs: list[PreferencePair], *, batch_size: int = 8, enable_thinking: bool | None = None,
                 shard=None) -> tuple[list[tuple[float, float, int, int]], list[tuple[str, str]]]:
    """Per scored pair: (log p(chosen), log p(rejected), chosen tokens, rejected tokens); and the pairs skipped, with why.
    `shard` (honed.eval.sharding.EvalShard): under torchrun, each rank scores its share of the batches."""
    from honed.eval.sharding import loss_sums

    tokenized, skipped = [], []
    for pair in pairs:
        try:
            tokenized.append(tokenize_pair(pair, bot.tokenizer, bot.template, max_seq_length=None, enable_thinking=enable_thinking))
        except DataError as err:
            skipped.append((pair.source, str(err).split(": ", 1)[-1]))
    sequences = [s for tp in tokenized for s in (tp.chosen, tp.rejected)]
    sums = loss_sums(bot.model, sequences, device=bot.device, pad_id=bot.tokenizer.pad_token_id, batch_size=batch_size, shard=shard)
    rows = [(-sums[2 * k][0], -sums[2 * k + 1][0], sums[2 * k][1], sums[2 * k + 1][1]) for k in range(len(tokenized))]
    return rows, skipped


def summarise(rows: list[tuple[float, float, int, int]], skipped: list) -> dict:
    """accuracy, mean_margin, length_normalised_accuracy over scored pairs (None when none were scored).

    >>> summarise([(-1.0, -3.0, 2, 2), (-4.0, -2.0, 4, 1)], [])
    {'n_pairs': 2, 'accuracy': 0.5, 'mean_margin': 0.0, 'length_normalised_accuracy': 1.0, 'skipped': 0}
    """
    n = len(rows)
    if not n:
        return {"n_pairs": 0, "accuracy": None, "mean_margin": None, "length_normalised_accuracy": None, "skipped": len(skipped)}
    return {
        "n_pairs": n,
        "accuracy": sum(c > r for c, r, _, _ in rows) / n,
        "mean_margin": sum(c - r for c, r, _, _ in rows) / n,
        "length_normalised_accuracy": sum(c / max(lc, 1) > r / max(lr, 1) for c, r, lc, lr in rows) / n,
        "skipped": len(skipped),
    }


def preference_metrics(bot, pairs: list[PreferencePair], *, batch_size: int = 8, enable_thinking: bool | None = None,
                       shard=None) -> dict:
    """The preference section of one model's eval metrics (see the module docstring)."""
    rows, skipped = pair_margins(bot, pairs, batch_size=batch_size, enable_thinking=enable_thinking, shard=shard)
    return summarise(rows, skipped)
