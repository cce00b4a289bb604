"""`honed bench --lengths`: real-data lengths → seeded random-token samples → honed's packed micro-batches.

A shipped distribution of per-sample token lengths (resources/bench/, synthetic and documented in
each file) gives reproducible lengths; each sample gets seeded random tokens; honed's own packing
(`data.packing`) plans them into micro-batches of `batch` rows of up to `seq` tokens. The same
micro-batches go to every stack (honed bench, benchmarks/packed_peers.py's HF+PEFT and Unsloth), so
effective tokens/s compare like for like; `BenchData.fingerprint` shows that they did.

>>> data = bench_data("alpaca", vocab_size=1000, seq=1024, batch=2, warmup=1, steps=2)
>>> [len(mb) for mb in data.timed], len(data.fingerprint())
([2, 2], 12)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from honed.errors import DataError

# --lengths NAME → resources/bench/FILE; each file says how it was made and that it is synthetic.
LENGTH_DISTRIBUTIONS = {"alpaca": "alpaca_llama3.json"}
DATA_SEED = 1  # lengths and tokens, as peer_bench.py seeds its batches
FIRST_TOKEN_ID = 10  # random tokens come from [10, vocab), as in peer_bench.py (clear of special ids)
PAD_ID = 3  # the stand-in tokenizer's pad token ("t3"); padding is never trained, so any id would do
IGNORE = -100


def load_length_histogram(spec: str) -> dict:
    """A length distribution by name (`alpaca`) or from a JSON file `{"bins": [[lo, hi, count], …]}`.

    Bounds are inclusive token counts; a drawn length is uniform inside its bin.

    >>> h = load_length_histogram("alpaca")
    >>> h["name"], h["bins"][0][:2], 150 < h["stats"]["mean"] < 300
    ('alpaca', [33, 40], True)
    """
    if spec in LENGTH_DISTRIBUTIONS:
        where = resources.files("honed").joinpath("resources", "bench", LENGTH_DISTRIBUTIONS[spec])
    else:
        where = Path(spec)
        if not where.is_file():
            raise DataError(f"--lengths {spec}: neither a shipped distribution ({', '.join(LENGTH_DISTRIBUTIONS)}) nor a file")
    try:
        histogram = json.loads(where.read_text())
        bins = histogram["bins"]
        ok = bool(bins) and all(len(b) == 3 and 1 <= b[0] <= b[1] and b[2] >= 0 for b in bins) and sum(b[2] for b in bins) > 0
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"--lengths {spec}: {where} is not a length histogram ({err})") from None
    if not ok:
        raise DataError(f"--lengths {spec}: {where}: 'bins' must be [[lo, hi, count], …] with 1 <= lo <= hi, counts >= 0 and some count > 0")
    return histogram


def draw_lengths(histogram: dict, n: int, *, seed: int = DATA_SEED, max_length: int | None = None) -> list[int]:
    """`n` per-sample token lengths drawn from `histogram`, the same for the same seed everywhere.

    Only `random.Random(seed).random()` is used (two calls a sample: the bin, then the length inside
    it), which Python keeps stable across versions; a longer draw starts with a shorter one. Lengths
    over `max_length` are cut to it, as tokenization truncates to `data.max_seq_length`.

    >>> h = {"bins": [[1, 1, 1], [10, 19, 3]]}
    >>> draw_lengths(h, 6, seed=0), draw_lengths(h, 6, seed=0, max_length=14)
    ([17, 12, 14, 13, 15, 15], [14, 12, 14, 13, 14, 14])
    >>> draw_lengths(h, 3, seed=0) == draw_lengths(h, 6, seed=0)[:3]
    True
    """
    bins = histogram["bins"]
    cumulative, total = [], 0
    for _lo, _hi, count in bins:
        total += count
        cumulative.append(total)
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        lo, hi, _count = bins[bisect.bisect_right(cumulative, rng.random() * total)]
        length = lo + int(rng.random() * (hi - lo + 1))
        lengths.append(min(length, max_length) if max_length else length)
    return lengths


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Mean and nearest-rank percentiles of a list of lengths.

    >>> length_stats(list(range(1, 101)))
    {'mean': 50.5, 'p10': 10, 'p50': 50, 'p90': 90, 'p99': 99, 'max': 100}
    """
    ordered = sorted(lengths)

    def rank(percent: int) -> int:  # nearest rank: the ceil(n·p/100)-th smallest
        return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]

    return {"mean": round(sum(ordered) / len(ordered), 1), "p10": rank(10), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def attended_length(lengths: list[int]) -> float:
    """How many keys a token attends to on average when each sample attends only to itself: Σl²/Σl.

    >>> attended_length([2048]), attended_length([100, 300])
    (2048.0, 250.0)
    """
    return sum(n * n for n in lengths) / sum(lengths)


def random_samples(lengths: list[int], vocab_size: int, *, seed: int = DATA_SEED) -> list:
    """One TokenizedSample of seeded random tokens per length, every token trained but the first.

    The first label is -100 as packing sets it anyway (it would be predicted from the sample before),
    so packed and padded layouts train the same tokens: length - 1 per sample.
    """
    import torch

    from honed.data.tokenize import TokenizedSample

    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(FIRST_TOKEN_ID, vocab_size, (sum(lengths),), generator=g).tolist()
    samples, start = [], 0
    for n in lengths:
        chunk = ids[start : start + n]
        samples.append(TokenizedSample(chunk, [IGNORE] + chunk[1:], "bench", False, n - 1))
        start += n
    return samples


@dataclass
class BenchData:
    """The micro-batches every stack trains on: rows of samples, `batch` rows of up to `seq` tokens each."""

    warmup: list[list[list]]  # micro-batch → row → TokenizedSample
    timed: list[list[list]]
    drawn: int  # samples drawn from the distribution

    def timed_lengths(self) -> list[int]:
        return [len(s.input_ids) for mb in self.timed for row in mb for s in row]

    def fingerprint(self) -> str:
        """Hash of the timed micro-batches (layout and tokens): equal across stacks means equal data."""
        h = hashlib.sha256()
        for mb in self.timed:
            h.update(b"|micro-batch")
            for row in mb:
                h.update(b"|row")
                for s in row:
                    h.update(b"|" + ",".join(map(str, s.input_ids)).encode())
        return h.hexdigest()[:12]


def bench_data(spec: str, *, vocab_size: int, seq: int, batch: int, warmup: int, steps: int,
               samples: int | None = None, seed: int = DATA_SEED) -> BenchData:
    """Draw lengths from `spec`, fill them with random tokens and plan honed's packed micro-batches.

    Without `samples`, as many are drawn as make `warmup + steps` full micro-batches (the plan of a
    longer draw starts with that of a shorter one); with `samples`, the micro-batches of that many
    repeat in order when there are fewer than needed.

    >>> data = bench_data("alpaca", vocab_size=1000, seq=512, batch=2, warmup=1, steps=3)
    >>> len(data.warmup), len(data.timed), [len(mb) for mb in data.timed]
    (1, 3, [2, 2, 2])
    >>> all(sum(len(s.input_ids) for s in row) <= 512 for mb in data.timed for row in mb)
    True
    """
    from honed.data.packing import plan_batches

    histogram = load_length_histogram(spec)
    needed = warmup + steps
    n = samples or max(64, needed * batch * seq // int(histogram.get("stats", {}).get("mean", 200)))
    while True:
        lengths = draw_lengths(histogram, n, seed=seed, max_length=seq)
        plan = plan_batches(lengths, batch_size=batch, max_seq_length=seq, packing=True)
        if samples or len(plan) > needed:  # more than needed: the ones used are full
            break
        n *= 2
    order = [plan[i % len(plan)] for i in range(needed)]
    used = 1 + max(i for mb in order for row in mb for i in row)
    pool = random_samples(lengths[:used], vocab_size, seed=seed)
    as_samples = [[[pool[i] for i in row] for row in mb] for mb in order]
    return BenchData(warmup=as_samples[:warmup], timed=as_samples[warmup:], drawn=n)


def count_tokens(batch) -> tuple[int, int]:
    """(effective, total) tokens of a collated micro-batch; effective leaves out padding (sample_index -1).

    >>> import torch
    >>> count_tokens({"sample_index": torch.tensor([[0, 0, 1, -1], [2, 2, 2, 2]])})
    (7, 8)
    """
    index = batch["sample_index"]
    return int((index >= 0).sum()), index.numel()


def trained_tokens(batch) -> int:
    """Tokens a micro-batch trains on: labels other than -100 after the shift (the first of a row predicts nothing)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def throughput(batches: list, seconds: float) -> dict:
    """effective_tokens_per_s (non-padding), tokens_per_s (padding counted) and padding_pct of timed micro-batches.

    >>> import torch
    >>> throughput([{"sample_index": torch.tensor([[0, 0, 1, -1]])}], 1.0)
    {'effective_tokens_per_s': 3.0, 'tokens_per_s': 4.0, 'padding_pct': 25.0}
    """
    counts = [count_tokens(b) for b in batches]
    effective, total = sum(e for e, _ in counts), sum(n for _, n in counts)
    return {"effective_tokens_per_s": round(effective / seconds, 1), "tokens_per_s": round(total / seconds, 1),
            "padding_pct": round(100 * (total - effective) / total, 2)}


def weighted_mean_loss(losses: list[float], counts: list[int]) -> float:
    """The mean loss per trained token over several micro-batches (each loss is its own mean).

    >>> weighted_mean_loss([1.0, 4.0], [3, 1])
    1.75
    """
    return sum(loss * n for loss, n in zip(losses, counts)) / max(1, sum(counts))
