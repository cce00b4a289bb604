"""Write the synthetic Alpaca-like length histogram that `honed bench --lengths alpaca` draws from.

The histogram is synthetic: no Alpaca text was tokenized to make it. It models one Alpaca record
rendered with the Alpaca prompt template and counted in Llama-3 tokens, as the sum of four parts:

- template: bos + "Below is an instruction that describes a task. Write a response that
  appropriately completes the request.\\n\\n### Instruction:\\n … ### Response:\\n" + eos, about
  30 tokens; 43 when the record has an input (the template then adds ", paired with an input that
  provides further context" and an "### Input:" section);
- instruction: one sentence as a rule, lognormal with median 15 tokens (sigma 0.45);
- input: present in 40% of records (Alpaca leaves it empty in about 60%), lognormal, median 18, sigma 0.8;
- output: a mixture, because Alpaca mixes one-word answers (classification, "Positive", a number)
  with paragraphs: 20% lognormal median 6 (sigma 0.7), 80% lognormal median 125 (sigma 0.7).

The parameters were chosen so the published rough shape of Alpaca-style SFT data comes out: most
records a few hundred tokens, mean about 200, a right tail into the high hundreds and, rarely, past
a thousand. Lengths are capped at 2048. Every draw uses only `random.Random(seed).random()` and
`statistics.NormalDist.inv_cdf`, whose results Python keeps stable across versions, so the same
seed writes the same file.

    python benchmarks/make_length_histogram.py > src/honed/resources/bench/alpaca_llama3.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
from statistics import NormalDist

TEMPLATE_TOKENS, TEMPLATE_WITH_INPUT_TOKENS = 30, 43
MAX_LENGTH, BIN_WIDTH = 2048, 8
_NORMAL = NormalDist()


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    # inv_cdf of a uniform in (0, 1): the open interval keeps it finite
    u = min(max(rng.random(), 1e-12), 1 - 1e-12)
    return median * math.exp(sigma * _NORMAL.inv_cdf(u))


def alpaca_record_length(rng: random.Random) -> int:
    """Llama-3 tokens of one synthetic Alpaca record in the Alpaca prompt template."""
    has_input = rng.random() < 0.4
    total = TEMPLATE_WITH_INPUT_TOKENS if has_input else TEMPLATE_TOKENS
    total += lognormal(rng, 15, 0.45)
    if has_input:
        total += lognormal(rng, 18, 0.8)
    total += lognormal(rng, 6, 0.7) if rng.random() < 0.2 else lognormal(rng, 125, 0.7)
    return min(MAX_LENGTH, max(1, round(total)))


def histogram(draws: int, seed: int) -> list[list[int]]:
    """[[lo, hi, count], …] over bins of BIN_WIDTH tokens (inclusive bounds), empty bins left out."""
    rng = random.Random(seed)
    counts = [0] * (MAX_LENGTH // BIN_WIDTH)
    for _ in range(draws):
        counts[(alpaca_record_length(rng) - 1) // BIN_WIDTH] += 1
    return [[i * BIN_WIDTH + 1, (i + 1) * BIN_WIDTH, c] for i, c in enumerate(counts) if c]


def histogram_stats(bins: list[list[int]]) -> dict[str, float]:
    """Mean (bin midpoints) and percentiles (bin upper bounds) of a histogram, for the file's header."""
    total = sum(c for *_, c in bins)
    stats = {"mean": round(sum((lo + hi) / 2 * c for lo, hi, c in bins) / total, 1)}
    seen = 0
    for lo, hi, c in bins:
        seen += c
        for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            if name not in stats and seen >= q * total:
                stats[name] = hi
    stats["max"] = bins[-1][1]
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bins = histogram(args.draws, args.seed)
    doc = {
        "name": "alpaca",
        "description": "Synthetic per-sample token lengths shaped like Alpaca (instruction + optional input + output "
                       "in the Alpaca prompt template, Llama-3 tokens). Not measured on Alpaca; see the generator.",
        "generator": f"python benchmarks/make_length_histogram.py --draws {args.draws} --seed {args.seed}",
        "unit": "tokens per sample",
        "stats": histogram_stats(bins),
        "bins": bins,
    }
    # One bin per line keeps the file diffable.
    body = ",\n    ".join(json.dumps(b) for b in bins)
    head = json.dumps({k: v for k, v in doc.items() if k != "bins"}, indent=2)[:-2]  # without the closing "\n}"
    print(f'{head},\n  "bins": [\n    {body}\n  ]\n}}')


if __name__ == "__main__":
    main()
