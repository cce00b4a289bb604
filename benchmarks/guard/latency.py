"""Gate latency and memory with 10^6 indexed questions, on CPU.

Embedding a million texts with MiniLM on a CPU takes hours, so the index holds 10^6 random unit
vectors of MiniLM's size (384): search cost depends on the count and size of the vectors, not on
what they say. The gate is the real one (gate.json + LanceDB index + MiniLM embedder) and each
query is a real question, embedded per call.

    PYTHONPATH=src python benchmarks/guard/latency.py --rows 1000000 --out /tmp/gate-1m
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from honed.guard.gate import GATE_VERSION, load_gate
from honed.guard.index import VectorIndex


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(out: Path, rows: int, dim: int, ann: bool) -> float:
    rng = np.random.default_rng(0)

    def batches():
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            v = rng.standard_normal((n, dim), dtype=np.float32)
            yield v / np.linalg.norm(v, axis=1, keepdims=True), [f"synthetic {start + i}" for i in range(n)]

    t = time.perf_counter()
    index = VectorIndex.create(out, "index", batches(), ann=ann)
    seconds = time.perf_counter() - t
    config = {"version": GATE_VERSION, "embedder": "minilm", "score": "knn", "k": 3, "target_tpr": 0.95,
              "parts": {"all": {"embedder": "minilm", "indexed": index.rows, "threshold": 0.5}}}
    (out / "gate.json").write_text(json.dumps(config))
    (out / "calibration.jsonl").write_text("")
    return seconds


def percentiles(xs):
    xs = sorted(xs)
    return 1000 * statistics.median(xs), 1000 * xs[int(0.95 * (len(xs) - 1))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--out", default="/tmp/gate-bench")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--ann", choices=["yes", "no"], default="yes")
    p.add_argument("--exact", metavar="DIR", help="a gate over the same rows without the ANN index: report the ANN's recall and score error")
    a = p.parse_args()
    out = Path(a.out)
    if a.exact:
        return compare(out, Path(a.exact), a.queries)
    if not (out / "gate.json").exists():
        seconds = build(out, a.rows, 384, a.ann == "yes")
        print(f"built {a.rows} rows (ann={a.ann}) in {seconds:.0f} s; on disk {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.0f} MiB")
    before = rss_mib()
    gate = load_gate(out)
    questions = [f"What does test number {i} measure in the blood?" for i in range(a.queries)]
    gate.check(questions[0])  # warm-up
    part = gate.parts["all"]
    embed, search, total = [], [], []
    for q in questions:
        t0 = time.perf_counter()
        v = part.embedder.encode([q])
        t1 = time.perf_counter()
        part.index.search(v, gate.k)
        t2 = time.perf_counter()
        gate.check(q)
        t3 = time.perf_counter()
        embed.append(t1 - t0), search.append(t2 - t1), total.append(t3 - t2)
    print(f"rows {part.index.rows}, ann index: {part.index.has_ann}, {a.queries} queries, one at a time")
    for name, xs in (("embed (MiniLM)", embed), ("search (LanceDB)", search), ("gate.check", total)):
        p50, p95 = percentiles(xs)
        print(f"{name:18s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    print(f"RSS: {before:.0f} MiB before loading the gate, {rss_mib():.0f} MiB after the queries; peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def compare(ann_dir: Path, exact_dir: Path, n: int) -> None:
    """Neighbours and knn scores of the ANN index against the exact scan, for `n` real questions."""
    ann, exact = load_gate(ann_dir).parts["all"], load_gate(exact_dir).parts["all"]
    vectors = ann.embedder.encode([f"What does test number {i} measure in the blood?" for i in range(n)])
    (s_ann, t_ann), (s_exact, t_exact) = ann.index.search(vectors, 3), exact.index.search(vectors, 3)
    recall = np.mean([len(set(a) & set(e)) / 3 for a, e in zip(t_ann, t_exact)])
    error = np.abs(s_ann.mean(1) - s_exact.mean(1))
    print(f"ANN vs exact on {n} queries: recall@3 {recall:.3f}; knn score error mean {error.mean():.4f}, max {error.max():.4f}")


if __name__ == "__main__":
    main()
