"""Pure functions behind the training strategies: which samples an epoch holds, and in what order.

Every function takes its randomness as an argument (a `random.Random` seeded by (seed, epoch)),
so an epoch's plan is a function of the seed, the epoch and what the strategy learned — which is
what makes a resumed run equal an uninterrupted one.

>>> import random
>>> idx = balanced_indices(["a", "a", "a", "b"], "uniform", random.Random(0), size=4)
>>> len(idx), idx.count(3)      # b, one sample, is repeated to fill its half
(4, 2)
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict

from honed.errors import ConfigError, DataError


def largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total` in proportion to `shares` (Hamilton's method)."""
    norm = sum(shares.values())
    exact = {k: total * w / norm for k, w in shares.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    # Ties in the remainder go to the first key in sorted order: deterministic across runs.
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def balanced_indices(values: list, weights, rng: random.Random, size: int | None = None,
                     sources: list[str] | None = None, key: str = "label") -> list[int]:
    """A multiset of sample indices whose `values` follow `weights` ("uniform" or value → share).

    A value with more samples than its share is under-sampled (a seeded subset); one with fewer is
    over-sampled (every sample repeated, plus a seeded subset for the rest). `size` is the epoch
    length (default: len(values)); the result lists each group's indices, groups in sorted order.

    >>> idx = balanced_indices(["pos"] * 8 + ["neg"] * 2, {"pos": 1, "neg": 1}, random.Random(0))
    >>> sum(1 for i in idx if i < 8), sum(1 for i in idx if i >= 8)
    (5, 5)
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        if v is None:
            where = sources[i] if sources else f"sample {i}"
            raise DataError(f"{where}: data.sampling.balance.by={key!r} but this sample has no meta[{key!r}]; "
                            "add the field to every record or balance on another key")
        groups[str(v)].append(i)
    if weights == "uniform":
        weights = {v: 1.0 for v in groups}
    weights = {str(k): float(w) for k, w in weights.items()}
    unknown = sorted(set(groups) - set(weights))
    if unknown:
        raise ConfigError(f"data.sampling.balance.weights: the data has {key} values {unknown} with no weight; "
                          f"give each a weight (0 drops it); values found: {sorted(groups)}")
    absent = sorted(k for k, w in weights.items() if w > 0 and k not in groups)
    if absent:
        raise ConfigError(f"data.sampling.balance.weights: no sample has {key} {absent}; values found: {sorted(groups)}")
    total = size or len(values)
    counts = largest_remainder(total, {k: w for k, w in weights.items() if w > 0})
    out: list[int] = []
    for value in sorted(counts):
        members, want = groups[value], counts[value]
        whole, rest = divmod(want, len(members))
        out += members * whole + sorted(rng.sample(members, rest))
    return out


def hard_replays(indices: list[int], origins: list[int], loss_by_origin: dict[int, float], *,
                 top_fraction: float, factor: int, keep_size: bool) -> list[int]:
    """Give the samples of the highest-loss origins `factor` places in the epoch instead of one.

    Losses are per origin (the original record an augmented sample came from), so mining works
    when on-the-fly augmentation draws new variants each epoch. With `keep_size`, as many entries
    of the lowest-loss origins sit this epoch out as replays were added: the number of steps of a
    run is planned from epoch 0, and a longer epoch would be cut short.

    >>> hard_replays([0, 1, 2, 3], [0, 1, 2, 3], {0: 0.1, 1: 3.0, 2: 0.5, 3: 0.2},
    ...              top_fraction=0.25, factor=3, keep_size=True)
    [1, 2, 1, 1]
    """
    scored = sorted({origins[i] for i in indices if origins[i] in loss_by_origin},
                    key=lambda o: (-loss_by_origin[o], o))
    if not scored:
        return list(indices)
    hard = set(scored[: max(1, math.ceil(top_fraction * len(scored)))])
    extra = [i for i in indices if origins[i] in hard for _ in range(factor - 1)]
    out = list(indices)
    if keep_size:
        # Drop entries of the easiest origins first (never a hard one), as many as were added.
        easiest = [o for o in reversed(scored) if o not in hard]
        rank = {o: r for r, o in enumerate(easiest)}
        droppable = sorted((rank[origins[i]], pos) for pos, i in enumerate(out) if origins[i] in rank)
        drop = {pos for _, pos in droppable[: len(extra)]}
        extra = extra[: len(droppable)]  # with nothing left to drop, add only what fits
        out = [i for pos, i in enumerate(out) if pos not in drop]
    return out + extra


def curriculum_order(indices: list[int], difficulty: list[float], buckets: int, rng: random.Random) -> list[int]:
    """Easy → hard: indices sorted by difficulty, cut into `buckets` stages, shuffled inside each.

    Shuffling inside a stage keeps batches varied while the stage order keeps the curriculum.

    >>> curriculum_order([0, 1, 2, 3], [4.0, 1.0, 3.0, 2.0], buckets=4, rng=random.Random(0))
    [1, 3, 2, 0]
    """
    ranked = sorted(indices, key=lambda i: (difficulty[i], i))
    n = len(ranked)
    out: list[int] = []
    for b in range(buckets):
        chunk = ranked[b * n // buckets: (b + 1) * n // buckets]
        rng.shuffle(chunk)
        out += chunk
    return out


def difficulty_of(measure: str, samples: list, metas: list[dict], origin_loss: dict[int, float] | None = None,
                  origins: list[int] | None = None) -> list[float]:
    """A difficulty per sample: `length` (tokens), `loss` (of its origin, from a scoring pass), or `meta:KEY`.

    >>> from types import SimpleNamespace as S
    >>> difficulty_of("length", [S(input_ids=[1, 2]), S(input_ids=[1])], [{}, {}])
    [2.0, 1.0]
    """
    if measure == "length":
        return [float(len(s.input_ids)) for s in samples]
    if measure == "loss":
        # A variant whose record was not scored (it did not tokenize on its own) counts as middling.
        fallback = statistics.median(origin_loss.values()) if origin_loss else 0.0
        return [float(origin_loss.get(o, fallback)) for o in origins]
    key = measure.split(":", 1)[1]
    out = []
    for s, meta in zip(samples, metas):
        try:
            out.append(float(meta[key]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{s.source}: data.sampling.curriculum.measure={measure!r} needs a numeric "
                            f"meta[{key!r}] in every record, got {meta.get(key)!r}") from None
    return out
