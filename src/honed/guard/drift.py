"""Has the traffic moved away from the domain the gate was calibrated on?

Compares the scores of logged live queries with the calibration scores (out-of-fold or held out) stored at fit
time: PSI (population stability index) and the two-sample Kolmogorov-Smirnov test (scipy), the
share of recent queries close to the threshold, and the out-of-domain topics that keep coming back
(agglomerative clustering of their embeddings, scikit-learn).

"Close to the threshold" is measured in calibration quantiles, so it means the same for every
score kind: a query is near when its position in the calibration distribution is within `near`
(default 0.05) of the threshold's position.

>>> round(psi([0.1, 0.2, 0.3, 0.4] * 25, [0.1, 0.2, 0.3, 0.4] * 25), 6)
0.0
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from honed.errors import DataError
from honed.guard.gate import read_calibration

PSI_BINS = 10


def psi(expected, actual, bins: int = PSI_BINS) -> float:
    """Population stability index of `actual` against `expected`, on `expected`'s quantile bins.

    Written out because neither scipy nor scikit-learn has it; it is sum((a - e) * ln(a / e)) over
    bins, with a small floor so an empty bin does not make it infinite."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    e, a = np.maximum(e, 1e-4), np.maximum(a, 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_verdict(value: float) -> str:
    """The common reading of PSI: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift."""
    return "stable" if value < 0.1 else "moderate shift" if value < 0.25 else "major shift"


@dataclass
class RouteDrift:
    route: str
    n_queries: int
    n_calibration: int
    psi: float
    ks: float
    ks_pvalue: float
    near_share: float  # of the recent queries
    refused_share: float


@dataclass
class TopicCluster:
    size: int
    examples: list[str]


@dataclass
class DriftReport:
    routes: list[RouteDrift] = field(default_factory=list)
    topics: list[TopicCluster] = field(default_factory=list)
    n_queries: int = 0
    n_recent: int = 0


def _ecdf(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    ranked = np.sort(reference)
    return np.searchsorted(ranked, values, side="right") / len(ranked)


def drift_report(gate, queries: list[str], *, recent: int = 500, near: float = 0.05, cluster_distance: float = 0.6, top: int = 5) -> DriftReport:
    """Score `queries` (oldest first) with `gate` and compare them with its calibration set."""
    from scipy.stats import ks_2samp

    if not queries:
        raise DataError("guard drift: the query log holds no queries")
    calibration = read_calibration(gate.folder)
    decisions = gate.check_many(queries)
    report = DriftReport(n_queries=len(queries), n_recent=min(recent, len(queries)))
    recent_from = len(queries) - report.n_recent
    for route, part in gate.parts.items():
        cal = np.array([c["score"] for c in calibration if c["route"] == route])
        rows = [i for i, d in enumerate(decisions) if d.route == route]
        if not rows or not len(cal):
            continue
        scores = np.array([decisions[i].score for i in rows])
        recent_scores = np.array([decisions[i].score for i in rows if i >= recent_from])
        at_threshold = _ecdf(cal, np.array([part.threshold]))[0]
        near_share = float(np.mean(np.abs(_ecdf(cal, recent_scores) - at_threshold) <= near)) if len(recent_scores) else 0.0
        ks = ks_2samp(cal, scores)
        report.routes.append(RouteDrift(route, len(rows), len(cal), psi(cal, scores), float(ks.statistic), float(ks.pvalue), near_share,
                                        float(np.mean(scores < part.threshold))))
    refused = [q for q, d in zip(queries, decisions) if not d.in_domain]
    report.topics = recurring_topics(gate, refused, cluster_distance, top)
    return report


def recurring_topics(gate, refused: list[str], distance: float, top: int) -> list[TopicCluster]:
    """Clusters (of two or more) among the refused queries, biggest first, a few examples each."""
    from sklearn.cluster import AgglomerativeClustering

    clusters: list[TopicCluster] = []
    by_route: dict[str, list[str]] = {}
    counts = Counter(refused)  # a repeated query is clustered once and weighs its count
    for q in counts:
        by_route.setdefault(gate.route_of(q), []).append(q)
    for route, texts in by_route.items():
        if len(texts) < 2:
            labels = [0] * len(texts)
        else:
            vectors = gate.parts[route].embedder.encode(texts)
            labels = AgglomerativeClustering(n_clusters=None, distance_threshold=distance, metric="cosine", linkage="average").fit_predict(vectors)
        for label in sorted(set(labels)):
            members = [t for t, lab in zip(texts, labels) if lab == label]
            size = sum(counts[t] for t in members)
            if size >= 2:
                members.sort(key=lambda t: -counts[t])
                clusters.append(TopicCluster(size, members[:3]))
    clusters.sort(key=lambda c: -c.size)
    return clusters[:top]
