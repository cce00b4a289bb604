"""MinHash signatures and LSH banding for near-duplicate search (no extra dependency).

Texts become sets of character n-grams of their normalised form (lower case, punctuation and
runs of spaces removed), which works alike for English and Chinese. Each of `num_perm` seeded
hash permutations keeps its minimum over the set; two signatures agree in a position with
probability equal to the Jaccard similarity of the sets. LSH cuts signatures into bands and
makes two texts candidates when any band is identical; candidates are then confirmed with the
exact Jaccard similarity of their n-gram sets, so the report states the true similarity.

>>> index = LSHIndex(threshold=0.7)
>>> index.add("a", "The quick brown fox jumps over the lazy dog")
>>> index.query("The quick brown fox jumped over the lazy dog!")
[('a', 0.76)]
>>> index.query("A completely different sentence about lab tests")
[]
"""

from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np

_PRIME = (1 << 61) - 1
_MAX32 = (1 << 32) - 1
_DROP = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """What counts as the same text: NFKC, lower case, punctuation and spacing ignored."""
    return _DROP.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised text (the whole text when shorter than n)."""
    t = normalize(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))} if t else set()


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def lsh_params(threshold: float, num_perm: int, recall: float = 0.95) -> tuple[int, int]:
    """(bands, rows): the longest bands that still make a pair AT the threshold a candidate with
    probability ≥ `recall`.

    Longer bands mean fewer false candidates; missed pairs cannot be recovered, while false
    candidates are dropped by the exact Jaccard check — so the choice leans towards recall.

    >>> lsh_params(0.8, 128)
    (18, 7)
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands < 1 or 1 - (1 - threshold ** rows) ** bands < recall:
            break
        best = (bands, rows)
    return best


class MinHasher:
    """Seeded permutations (a·x + b mod p): the same seed gives the same signatures everywhere."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 31, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, num_perm, dtype=np.uint64)
        self.num_perm, self.ngram = num_perm, ngram

    def signature(self, grams: set[str]) -> np.ndarray:
        if not grams:
            return np.full(self.num_perm, _MAX32, dtype=np.uint64)
        # crc32 is stable across processes (Python's hash() is salted per run).
        x = np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint64, count=len(grams))
        # a < 2^31 and x < 2^32 keep a·x + b inside uint64 before the modulus.
        return (((x[:, None] * self.a[None, :]) + self.b[None, :]) % _PRIME & _MAX32).min(axis=0)


class LSHIndex:
    """Insert texts under a key; `query` returns (key, exact Jaccard) of indexed texts ≥ threshold."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, ngram, seed)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.tables: list[dict[bytes, list]] = [{} for _ in range(self.bands)]
        self.grams: dict = {}

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def query(self, text: str, grams: set[str] | None = None) -> list[tuple[object, float]]:
        grams = shingles(text, self.hasher.ngram) if grams is None else grams
        found: dict = {}
        for table, k in zip(self.tables, self._keys(self.hasher.signature(grams))):
            for key in table.get(k, ()):
                if key not in found:
                    found[key] = round(jaccard(grams, self.grams[key]), 2)
        return sorted(((k, s) for k, s in found.items() if s >= self.threshold), key=lambda x: -x[1])

    def add(self, key, text: str, grams: set[str] | None = None) -> None:
        grams = shingles(text, self.hasher.ngram) if grams is None else grams
        self.grams[key] = grams
        for table, k in zip(self.tables, self._keys(self.hasher.signature(grams))):
            table.setdefault(k, []).append(key)
