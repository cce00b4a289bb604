"""The gate's IVF-PQ index: its build settings per row count, and that its search re-ranks exactly."""

import numpy as np

from honed.guard.index import ANN_REFINE_FACTOR, VectorIndex, ann_nprobes, ann_params, refine_factor_for


def test_ann_params_per_row_count():
    assert ann_params(100_000, 384) == {"num_partitions": 316, "num_sub_vectors": 48}
    assert ann_params(1_000_000, 384) == {"num_partitions": 1000, "num_sub_vectors": 48}
    assert ann_params(1, 4) == {"num_partitions": 1, "num_sub_vectors": 1}


def test_search_settings_per_row_count():
    # ~10% of the partitions, at least 50, and 30 candidates per neighbour (50 for hashed vectors): measured in BENCHMARKS.md
    assert [ann_nprobes(rows) for rows in (600, 200_000, 1_000_000, 4_000_000)] == [50, 50, 100, 200]
    assert ANN_REFINE_FACTOR == 30 and [refine_factor_for(n) for n in ("minilm", "char-ngram:4096", "zh-words:8192", "st:/m")] == [30, 50, 50, 30]


def test_ann_search_returns_exact_cosines_of_the_true_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16))
    rows = (centres[rng.integers(0, 8, 600)] + 0.3 * rng.standard_normal((600, 16))).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    texts = [f"q{i}" for i in range(len(rows))]
    index = VectorIndex.create(tmp_path, "index", [(rows, texts)], ann=True, ann_options={"num_partitions": 4, "num_sub_vectors": 4})
    assert index.has_ann
    queries = rows[:20] + 0.05 * rng.standard_normal((20, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims, found = index.search(queries, 3)
    exact = queries @ rows.T
    top = np.argsort(-exact, axis=1)[:, :3]
    assert found == [[texts[j] for j in row] for row in top]
    np.testing.assert_allclose(sims, np.take_along_axis(exact, top, 1), atol=1e-5)
