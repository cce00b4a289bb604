"""The gate's memory of the domain: in-domain question vectors + texts in a LanceDB table on disk.

LanceDB keeps the vectors on disk and searches them with the cosine metric, so a million in-domain
questions fit and a fitted gate reopens instantly. Past `ANN_MIN_ROWS` rows an IVF-PQ index is
built (exact re-ranking of its candidates keeps the scores close to brute force); below that the
exact scan is fast enough and exact.

>>> import tempfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> rows = np.eye(3, dtype=np.float32)
>>> index = VectorIndex.create(folder, "index", [(rows, ["a", "b", "c"])])
>>> sims, texts = VectorIndex.open(folder, "index").search(rows[:1], k=2)
>>> round(float(sims[0, 0]), 3), texts[0][0]
(1.0, 'a')
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from honed.errors import HonedError

log = logging.getLogger(__name__)

ANN_MIN_ROWS = 100_000
# Search settings of the IVF-PQ index, measured on generated lab questions (BENCHMARKS.md,
# "Out-of-domain gate with 10^6 indexed questions"): LanceDB's usual 20 probes x refine 10 found only
# 0.86 of the exact top 3 for hand-written English questions (the gate's score off by up to 0.024);
# probing ~10% of the partitions (at least 50) and refining 30 per neighbour finds 0.978 (score within
# 0.004) at 2x10^5 rows and 0.945 (score within 0.009) at 10^6 real questions, for ~2-5 ms more per query.
ANN_NPROBES = 50  # the fewest IVF partitions searched per query
ANN_PROBED_SHARE = 10  # search at least 1/ANN_PROBED_SHARE of the partitions
ANN_REFINE_FACTOR = 30  # candidates re-ranked with the exact vectors, per neighbour asked for
# Hashed n-gram vectors (`char-ngram`, `zh-words`) are sparse, and product quantisation codes them
# poorly: at 2x10^5 `zh-words` rows refining 30 let the gate's score drift by up to 0.095 from the
# exact one, refining 50 by 0.015, for ~3 ms more. Dense vectors keep 30: on 10^6 MiniLM rows 50 cost
# ~18 ms more per cold search for a score error no smaller (0.008 against 0.009).
SPARSE_REFINE_FACTOR = 50
HASHED_EMBEDDERS = ("char-ngram", "zh-words")
SEARCH_BATCH = 1024  # queries per LanceDB call: bounds the memory of one batched search


def refine_factor_for(embedder_name: str) -> int:
    """How many candidates per neighbour an index of this embedder's vectors re-ranks exactly."""
    return SPARSE_REFINE_FACTOR if embedder_name.startswith(HASHED_EMBEDDERS) else ANN_REFINE_FACTOR


class GateError(HonedError):
    """A gate folder is missing, damaged, or does not fit what was asked of it."""


class GateIndexError(GateError):
    """A gate's vector index is missing, unreadable or does not match its gate.json."""


def _lancedb():
    try:
        import lancedb
    except ImportError as err:
        raise GateError("the gate's vector index needs LanceDB: pip install lancedb (a core dependency of honed)") from err
    return lancedb


def _arrow_batch(vectors: np.ndarray, texts: list[str]):
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    return pa.table({"vector": column, "text": pa.array(texts, pa.string())})


def ann_params(rows: int, dim: int) -> dict:
    """The IVF-PQ index's build settings for `rows` vectors of size `dim`."""
    # ~sqrt(rows) partitions and 8-dim PQ sub-vectors: LanceDB's documented rule of thumb.
    return {"num_partitions": max(1, int(rows**0.5)), "num_sub_vectors": max(1, dim // 8)}


def ann_nprobes(rows: int) -> int:
    """IVF partitions to search per query in an index built by `ann_params` over `rows` vectors."""
    return max(ANN_NPROBES, ann_params(rows, 1)["num_partitions"] // ANN_PROBED_SHARE)


class VectorIndex:
    """One LanceDB table `<folder>/<name>.lance` of unit vectors and their texts."""

    def __init__(self, table, folder: Path, name: str):
        self.table, self.folder, self.name = table, folder, name
        self.rows = table.count_rows()
        self.nprobes, self.refine_factor = ann_nprobes(self.rows), ANN_REFINE_FACTOR
        self.dim = table.schema.field("vector").type.list_size
        self.has_ann = bool(table.list_indices())

    @classmethod
    def create(cls, folder: str | Path, name: str, batches: Iterable[tuple[np.ndarray, list[str]]], *, ann: bool | None = None,
               ann_options: dict | None = None) -> "VectorIndex":
        """Write the table from `(vectors, texts)` batches (streamed, so a million rows need not fit
        in memory twice); build the ANN index when `ann` (default: at `ANN_MIN_ROWS` rows), with
        `ann_params` overridden by `ann_options` (LanceDB `create_index` keywords)."""
        folder = Path(folder)
        db = _lancedb().connect(str(folder))
        table = None
        for vectors, texts in batches:
            if len(texts) == 0:
                continue
            batch = _arrow_batch(vectors, texts)
            if table is None:
                table = db.create_table(name, data=batch)
            else:
                table.add(batch)
        if table is None:
            raise GateIndexError(f"{folder}: no vectors to index")
        rows = table.count_rows()
        if ann if ann is not None else rows >= ANN_MIN_ROWS:
            dim = table.schema.field("vector").type.list_size
            table.create_index(metric="cosine", vector_column_name="vector", **{**ann_params(rows, dim), **(ann_options or {})})
        return cls(table, folder, name)

    @classmethod
    def open(cls, folder: str | Path, name: str) -> "VectorIndex":
        """Reopen a stored table; a missing or unreadable one is a `GateIndexError` naming the path."""
        lancedb = _lancedb()
        folder = Path(folder)
        path = folder / f"{name}.lance"
        if not path.is_dir():
            raise GateIndexError(f"{path}: the gate's vector index is missing; fit the gate again (honed guard fit)")
        try:
            table = lancedb.connect(str(folder)).open_table(name)
            return cls(table, folder, name)
        except Exception as err:  # lance raises several kinds (IO, schema, value) for a damaged table
            raise GateIndexError(f"{path}: the gate's vector index cannot be read ({type(err).__name__}: {err}); fit the gate again") from None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine similarities of each query's `k` nearest rows (best first, shape [n, k]) and their texts."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, self.rows)
        sims = np.full((len(queries), k), -1.0, dtype=np.float32)
        texts: list[list[str]] = [[] for _ in range(len(queries))]
        for start in range(0, len(queries), SEARCH_BATCH):
            self._search_into(queries[start : start + SEARCH_BATCH], k, sims[start:], texts[start:])
        return sims, texts

    def _search_into(self, queries: np.ndarray, k: int, sims: np.ndarray, texts: list[list[str]]) -> None:
        query = self.table.search(queries if len(queries) > 1 else queries[0]).distance_type("cosine").limit(k).select(["text", "_distance"])
        if self.has_ann:
            query = query.nprobes(self.nprobes).refine_factor(self.refine_factor)
        try:
            result = query.to_arrow()
        except Exception as err:  # lance raises several kinds (IO, schema, value) for a damaged table
            raise GateIndexError(f"{self.folder / self.name}.lance: search failed ({type(err).__name__}: {err}); fit the gate again") from None
        which = result.column("query_index").to_numpy() if "query_index" in result.column_names else np.zeros(result.num_rows, dtype=int)
        for q, d, t in zip(which, result.column("_distance").to_numpy(), result.column("text").to_pylist()):
            row = len(texts[q])
            if row < k:
                sims[q, row] = 1.0 - d
                texts[q].append(t)
