"""Scores (how in-domain a question looks) and the threshold that lets the target share of
held-out in-domain questions through.

Three scores, higher = more in-domain:
- `knn`: mean cosine similarity to the k nearest in-domain questions (default; needs the index);
- `centroid`: cosine similarity to the mean in-domain direction;
- `mahalanobis`: minus the Mahalanobis distance under a Ledoit-Wolf covariance (stable when there
  are fewer questions than dimensions).

>>> threshold_for([0.9, 0.8, 0.7, 0.6, 0.5], target_tpr=0.8)
0.6
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from honed.errors import ConfigError, DataError
from honed.guard.index import GateError

SCORE_KINDS = ("knn", "centroid", "mahalanobis")
MAHALANOBIS_MAX_ROWS = 200_000  # the covariance is fit on at most this many vectors (memory)
MAX_HELD_OUT = 10_000  # enough to place a 95% threshold to ~0.2 points; the rest is worth more in the index


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ConfigError(f"--calibration-fraction={fraction}: give a fraction between 0 and 1 (e.g. 0.2)")


def distinct_texts(texts: list[str]) -> list[str]:
    """The non-empty texts, stripped, each once, in first-seen order."""
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def split_for_calibration(texts: list[str], fraction: float, seed: int, where: str) -> tuple[list[str], list[str]]:
    """Distinct texts shuffled with `seed`, `fraction` of them (at least 1, at most `MAX_HELD_OUT`)
    held out for calibration."""
    _check_fraction(fraction)
    distinct = distinct_texts(texts)
    if len(distinct) < 2:
        raise DataError(f"{where}: {len(distinct)} distinct in-domain question(s); the gate needs at least 2 (some to index, some held out to calibrate)")
    random.Random(seed).shuffle(distinct)
    held = min(MAX_HELD_OUT, max(1, round(len(distinct) * fraction)))
    return distinct[held:], distinct[:held]


CROSS_FIT_MAX = 10_000  # up to this many distinct questions a route calibrates on all of them (below); above, on a held-out share


def calibration_folds(n_distinct: int, fraction: float) -> int:
    """How many folds cross-fitting uses for `n_distinct` questions (0: too many, hold out a share instead).

    Placing a 95% threshold from a fifth of a small set rests on its lowest one or two scores, and
    which questions land in that fifth moves it a lot (README's seed table: on the sample domain a
    held-out fifth refused 0 to 3 of 25 Chinese questions that belong, by seed; cross-fitting none).
    Cross-fitting scores every question against the folds it is not in, so the threshold rests on all
    of them, and all of them are indexed."""
    _check_fraction(fraction)
    if n_distinct > CROSS_FIT_MAX:
        return 0
    return max(2, min(n_distinct, round(1 / fraction)))


def cross_fitted_scores(kind: str, vectors: np.ndarray, k: int, folds: int, seed: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score (`ScoreStats.score` of `kind`) against the rows of the other folds only, and
    each row's fold (a seeded permutation). knn is exact (cosine of unit rows), as the index is at this size."""
    fold_of = np.random.default_rng(seed).permutation(len(vectors)) % folds
    scores = np.empty(len(vectors), dtype=np.float64)
    for fold in range(folds):
        inside, rest = np.flatnonzero(fold_of == fold), vectors[fold_of != fold]
        if kind != "knn":
            scores[inside] = ScoreStats.fit(kind, rest).score(vectors[inside])
            continue
        nearest = min(k, len(rest))
        for start in range(0, len(inside), block):
            rows = inside[start : start + block]
            sims = vectors[rows] @ rest.T
            scores[rows] = np.partition(sims, len(rest) - nearest, axis=1)[:, -nearest:].mean(1)
    return scores, fold_of


def threshold_for(scores, target_tpr: float) -> float:
    """The highest threshold that passes at least `target_tpr` of `scores` (score >= threshold passes)."""
    if not 0 < target_tpr <= 1:
        raise ConfigError(f"--target-tpr={target_tpr}: give a pass rate in (0, 1], e.g. 0.95")
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    return float(ranked[min(len(ranked) - 1, math.floor((1 - target_tpr) * len(ranked) + 1e-9))])


class ScoreStats:
    """What `centroid` and `mahalanobis` need: the mean direction, or the mean and precision matrix."""

    def __init__(self, kind: str, centroid: np.ndarray | None = None, location: np.ndarray | None = None, precision: np.ndarray | None = None):
        self.kind, self.centroid, self.location, self.precision = kind, centroid, location, precision

    @classmethod
    def fit(cls, kind: str, vectors: np.ndarray) -> "ScoreStats":
        if kind == "knn":
            return cls(kind)
        if kind == "centroid":
            mean = vectors.mean(0)
            return cls(kind, centroid=(mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32))
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=False).fit(vectors.astype(np.float64))
        return cls(kind, location=lw.location_.astype(np.float32), precision=lw.precision_.astype(np.float32))

    def save(self, path: Path) -> None:
        arrays = {k: v for k, v in (("centroid", self.centroid), ("location", self.location), ("precision", self.precision)) if v is not None}
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, kind: str, path: Path) -> "ScoreStats":
        if kind == "knn":
            return cls(kind)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(kind, **{k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError) as err:
            raise GateError(f"{path}: the gate's {kind} statistics cannot be read ({err}); fit the gate again") from None

    def score(self, vectors: np.ndarray, index=None, k: int = 3) -> np.ndarray:
        """Scores of unit `vectors` (float64 array, higher = more in-domain)."""
        if self.kind == "knn":
            sims, _ = index.search(vectors, k)
            return sims.astype(np.float64).mean(1)
        if self.kind == "centroid":
            return (vectors @ self.centroid).astype(np.float64)
        diff = (vectors - self.location).astype(np.float64)
        return -np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, self.precision.astype(np.float64), diff), 0.0))
