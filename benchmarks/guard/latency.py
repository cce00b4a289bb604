"""Gate latency, memory and ANN recall with up to 10^6 indexed questions, on CPU.

The index holds either generated clinical-lab questions (`--texts generated`, from `questions_1m.py
embed`: English ones embedded with MiniLM, or `--lang zh` ones with `zh-words`), or random unit vectors
of MiniLM's size (`--texts random`: IVF-PQ's worst case, no clusters; kept for comparison). The gate is
the real one: gate.json as the default `auto` gate writes it for the language's route (`latin` with
MiniLM, `cjk` with zh-words), honed's `VectorIndex` (LanceDB, IVF-PQ from ANN_MIN_ROWS rows), and each
query is a real held-out question in that language embedded per call: the sample data's questions,
then generated ones that are not in the index.

Recall@k is the ANN's top k against an exact scan (numpy, over the same vectors); `--sweep` measures
recall and search latency for several nprobes x refine_factor settings on the same index.

    PYTHONPATH=src python benchmarks/guard/questions_1m.py embed --rows 1000000 --out EMB
    PYTHONPATH=src python benchmarks/guard/latency.py --texts generated --embeddings EMB --out DIR --sweep
    PYTHONPATH=src python benchmarks/guard/latency.py --texts random --rows 1000000 --out DIR2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import questions_1m  # noqa: E402

from honed.guard.gate import GATE_VERSION, load_gate, table_name  # noqa: E402
from honed.guard.index import VectorIndex  # noqa: E402

ROUTES = {"en": "latin", "zh": "cjk"}
SAMPLE_DATA = Path(__file__).parents[2] / "src/honed/resources/sample_data"
REAL_FILES = ("clinical_lab_eval.jsonl", "clinical_lab_qa.jsonl", "hard_negatives.jsonl")  # none of them is in the generated index
SWEEP = [(20, 10), (20, 30), (50, 10), (50, 30), (50, 50), (100, 30), (100, 50), (200, 50)]


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_vectors(rows: int, dim: int = 384):
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        yield v / np.linalg.norm(v, axis=1, keepdims=True), [f"synthetic {start + i}" for i in range(n)]


def generated_vectors(folder: Path, rows: int):
    vectors, texts, _ = questions_1m.load_embeddings(folder)
    rows = min(rows, len(vectors))
    for start in range(0, rows, 100_000):
        end = min(start + 100_000, rows)
        yield vectors[start:end], texts[start:end]


def batches_for(a) -> list[tuple[np.ndarray, list[str]]]:
    return list(random_vectors(a.rows) if a.texts == "random" else generated_vectors(Path(a.embeddings), a.rows))


def language_of(a) -> tuple[str, str]:
    """(language, embedder name) of the index: the embeddings' own, or English MiniLM for random vectors."""
    if a.texts == "random":
        return "en", "minilm"
    meta = json.loads((Path(a.embeddings) / "meta.json").read_text())
    return meta["lang"], meta["embedder"]


def build(out: Path, batches, ann: bool, options: dict, lang: str, embedder: str) -> float:
    t = time.perf_counter()
    index = VectorIndex.create(out, table_name(ROUTES[lang]), batches, ann=ann, ann_options=options)
    seconds = time.perf_counter() - t
    part = {"embedder": embedder, "indexed": index.rows, "threshold": 0.5}  # the threshold does not change the cost
    config = {"version": GATE_VERSION, "embedder": "auto", "score": "knn", "k": 3, "target_tpr": 0.95, "parts": {ROUTES[lang]: part}}
    (out / "gate.json").write_text(json.dumps(config))
    (out / "calibration.jsonl").write_text("")
    return seconds


def held_out_questions(n: int, skip: int, lang: str = "en") -> tuple[list[str], int]:
    """The sample data's lab questions in `lang` (in-domain and hard negatives, written by hand), then
    generated ones past the first `skip`; and how many of them are the sample data's."""
    rows = [json.loads(line) for name in REAL_FILES for line in (SAMPLE_DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    real = list(dict.fromkeys(r["messages"][0]["content"] for r in rows if r.get("lang") == lang and r.get("kind", "hard_negative") in ("in_domain", "hard_negative")))[:n]
    return real + questions_1m.generate(skip + n - len(real), lang=lang)[skip:], len(real)


def percentiles(xs) -> tuple[float, float]:
    xs = sorted(xs)
    return 1000 * statistics.median(xs), 1000 * xs[int(0.95 * (len(xs) - 1))]


def exact_top(batches, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[set[str]]]:
    """The exact top-k cosines and texts of each query (the rows are unit vectors)."""
    best_sims = np.full((len(queries), 0), -2.0, np.float32)
    best_texts = np.empty((len(queries), 0), dtype=object)
    for vectors, texts in batches:
        sims = queries @ vectors.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        best_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, 1)], 1)
        best_texts = np.concatenate([best_texts, np.asarray(texts, dtype=object)[top]], 1)
        keep = np.argsort(-best_sims, axis=1)[:, :k]
        best_sims, best_texts = np.take_along_axis(best_sims, keep, 1), np.take_along_axis(best_texts, keep, 1)
    return best_sims, [set(row) for row in best_texts]


def timed_search(index: VectorIndex, vectors: np.ndarray, k: int) -> tuple[list[float], list[list[str]], np.ndarray]:
    seconds, found, sims = [], [], []
    for v in vectors:
        t = time.perf_counter()
        s, texts = index.search(v[None], k)
        seconds.append(time.perf_counter() - t)
        found.append(texts[0]), sims.append(s[0])
    return seconds, found, np.array(sims)


def recall(found: list[list[str]], exact: list[set[str]], k: int) -> float:
    return float(np.mean([len(set(f) & e) / k for f, e in zip(found, exact)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", choices=["generated", "random"], default="generated")
    p.add_argument("--embeddings", help="--texts generated: the folder of `questions_1m.py embed`")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to index (generated: at most what was embedded)")
    p.add_argument("--out", default="/tmp/gate-bench", help="the gate folder (built if it holds no gate.json)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ann", choices=["yes", "no"], default="yes")
    p.add_argument("--partitions", type=int, help="IVF partitions (default: honed's)")
    p.add_argument("--sub-vectors", type=int, help="PQ sub-vectors (default: honed's)")
    p.add_argument("--index-type", help="LanceDB index type, e.g. IVF_PQ, IVF_SQ, IVF_FLAT, IVF_HNSW_SQ (default: honed's)")
    p.add_argument("--sweep", action="store_true", help="also measure recall and search latency for several nprobes x refine_factor")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    if a.texts == "generated" and not a.embeddings:
        p.error("--texts generated needs --embeddings DIR (from questions_1m.py embed)")
    out, k = Path(a.out), 3
    lang, embedder_name = language_of(a)
    if not (out / "gate.json").exists():
        batches = batches_for(a)
        options = {key: v for key, v in (("num_partitions", a.partitions), ("num_sub_vectors", a.sub_vectors), ("index_type", a.index_type)) if v}
        seconds = build(out, batches, a.ann == "yes", options, lang, embedder_name)
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        (out / "build.json").write_text(json.dumps({"build_s": seconds, "disk_mib": disk, "options": options}))
        print(f"built {sum(len(t) for _, t in batches)} rows (ann={a.ann} {options}) in {seconds:.0f} s; on disk {disk:.0f} MiB", flush=True)
        del batches
        # measure in a fresh process, so its RSS is the gate's own and not the build's
        raise SystemExit(subprocess.run([sys.executable, *sys.argv]).returncode)
    result: dict = {"texts": a.texts, **json.loads((out / "build.json").read_text())} if (out / "build.json").exists() else {"texts": a.texts}
    before = rss_mib()
    gate = load_gate(out)
    part = gate.parts[ROUTES[lang]]
    skip = json.loads((Path(a.embeddings) / "meta.json").read_text())["rows"] if a.texts == "generated" else 0
    questions, n_real = held_out_questions(a.queries, skip, lang)
    gate.check(questions[0])  # warm-up
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
    result.update(rows=part.index.rows, ann=part.index.has_ann, queries=len(questions), rss_before_mib=before, rss_after_mib=rss_mib())
    print(f"rows {part.index.rows}, ann index: {part.index.has_ann}, {len(questions)} queries, one at a time")
    for name, xs in ((f"embed ({embedder_name})", embed), ("search (LanceDB)", search), ("gate.check", total)):
        p50, p95 = percentiles(xs)
        result[name.split()[0].replace(".", "_")] = {"p50_ms": p50, "p95_ms": p95}
        print(f"{name:18s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    print(f"RSS: {before:.0f} MiB before loading the gate, {rss_mib():.0f} MiB after the queries")
    if part.index.has_ann:
        vectors = part.embedder.encode(questions)
        exact_sims, exact = exact_top(batches_for(a), vectors, k)
        settings = SWEEP if a.sweep else [(part.index.nprobes, part.index.refine_factor)]  # honed's defaults for this index
        result["sweep"] = []
        print(f"ANN against the exact scan, {len(questions)} queries, k={k}:")
        for nprobes, refine in settings:
            part.index.nprobes, part.index.refine_factor = nprobes, refine
            timed_search(part.index, vectors[:5], k)  # warm the partitions' cache a little, as a serving gate would be
            seconds, found, sims = timed_search(part.index, vectors, k)
            error = float(np.abs(sims.mean(1) - exact_sims.mean(1)).max())  # the knn score the gate thresholds
            p50, p95 = percentiles(seconds)
            r, r_real, r_gen = recall(found, exact, k), recall(found[:n_real], exact[:n_real], k), recall(found[n_real:], exact[n_real:], k)
            result["sweep"].append({"nprobes": nprobes, "refine_factor": refine, "recall": r, "recall_hand_written": r_real, "recall_generated": r_gen, "max_score_error": error,
                                    "p50_ms": p50, "p95_ms": p95})
            print(f"  nprobes {nprobes:4d} refine {refine:3d}: recall@{k} {r:.3f} (hand-written {r_real:.3f}, generated {r_gen:.3f}), score error <= {error:.4f}"
                  f"   search p50 {p50:6.1f} ms  p95 {p95:6.1f} ms", flush=True)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {result['peak_rss_mib']:.0f} MiB (includes the exact scan's copy of the vectors)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
