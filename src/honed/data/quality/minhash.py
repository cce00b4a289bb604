"""Near-duplicate search: MinHash LSH (datasketch) over character n-grams, confirmed exactly.

Texts become sets of character n-grams of their normalised form (lower case, punctuation and
runs of spaces removed), which works alike for English and Chinese. datasketch's MinHash and
MinHashLSH find the candidates; the banding is chosen here to lean towards recall (`lsh_params`),
and candidates are confirmed with the exact Jaccard similarity of their n-gram sets, so the
report states the true similarity.

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

import numpy as np

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
    """MinHash signatures of n-gram sets (datasketch); the same seed gives the same signatures everywhere."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed

    def minhash(self, grams: set[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([g.encode("utf-8") for g in sorted(grams)])
        return m

    def signature(self, grams: set[str]) -> np.ndarray:
        return self.minhash(grams).hashvalues


class LSHIndex:
    """Insert texts under a key; `query` returns (key, exact Jaccard) of indexed texts ≥ threshold,
    most similar first (ties in insertion order)."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hasher = MinHasher(num_perm, ngram, seed)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(self.bands, self.rows))
        self.grams: dict = {}
        self.order: dict = {}

    def query(self, text: str, grams: set[str] | None = None) -> list[tuple[object, float]]:
        grams = shingles(text, self.hasher.ngram) if grams is None else grams
        found = [(key, round(jaccard(grams, self.grams[key]), 2)) for key in self.lsh.query(self.hasher.minhash(grams))]
        return sorted(((k, s) for k, s in found if s >= self.threshold), key=lambda x: (-x[1], self.order[x[0]]))

    def add(self, key, text: str, grams: set[str] | None = None) -> None:
        grams = shingles(text, self.hasher.ngram) if grams is None else grams
        self.grams[key] = grams
        self.order[key] = len(self.order)
        self.lsh.insert(key, self.hasher.minhash(grams))
