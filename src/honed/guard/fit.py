"""Fitting a gate: index the in-domain questions (and, when given, most out-of-domain examples, whose
score is subtracted: see `GatePart`), calibrate the threshold on the in-domain ones: each scored against
the other folds (cross-fitting, up to `CROSS_FIT_MAX` questions per route), or a held-out share above that.

Everything is written into a temporary folder beside `--out` and renamed into place at the end, so
a failure (a missing model, an empty file, an interrupt) leaves nothing half-written.

>>> report = fit_gate(["What is TSH?", "What does HbA1c measure?", "Normal potassium range?"], "/tmp/g", embedder="char-ngram")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from honed.errors import ConfigError, DataError, OutputExistsError
from honed.guard.calibration import (MAHALANOBIS_MAX_ROWS, SCORE_KINDS, ScoreStats, calibration_folds, cross_fitted_scores, distinct_texts,
                                     split_for_calibration, threshold_for)
from honed.guard.embedders import load_embedder
from honed.guard.gate import AUTO_EMBEDDERS, CALIBRATION_FILE, DEFAULT_REFUSALS, GATE_FILE, GATE_VERSION, GatePart, stats_file, table_name
from honed.guard.index import VectorIndex, refine_factor_for
from honed.guard.routing import script_of
from honed.utils.fs import atomic_dir

EMBED_BATCH = 1024
log = logging.getLogger(__name__)


@dataclass
class PartReport:
    route: str
    embedder: str
    indexed: int
    held_out: int  # in-domain questions the threshold was placed on (all of them when cross-fitted)
    threshold: float
    pass_rate: float
    ood: int = 0  # out-of-domain questions scored for the report (held out from the index when contrast is on)
    auroc: float | None = None
    fpr: float | None = None  # share of out-of-domain questions that pass the threshold
    ood_indexed: int = 0  # out-of-domain examples in the route's contrast index
    folds: int = 0  # cross-fitting folds (0: a held-out share, not indexed)


@dataclass
class FitReport:
    out: Path
    parts: list[PartReport] = field(default_factory=list)


MIN_ROUTE_QUESTIONS = 5  # fewer in-domain questions in a script cannot calibrate a route of their own


def _group(texts: list[str], embedder: str, merge_small: bool = True) -> dict[str, list[str]]:
    """`auto`: questions by script; a script with too few questions joins the biggest route."""
    if embedder != "auto":
        return {"all": texts}
    groups: dict[str, list[str]] = {}
    for t in texts:
        groups.setdefault(script_of(t), []).append(t)
    if merge_small and len(groups) > 1:
        biggest = max(groups, key=lambda r: len(set(groups[r])))
        for route in [r for r in groups if r != biggest and len(set(groups[r])) < MIN_ROUTE_QUESTIONS]:
            log.warning("only %d %s in-domain question(s): they join the %s route (no route of their own)", len(set(groups[route])), route, biggest)
            groups[biggest] += groups.pop(route)
    return groups


def _batches(embedder, texts: list[str], keep: list[np.ndarray] | None, what: str = "in-domain"):
    from rich.progress import track

    starts = range(0, len(texts), EMBED_BATCH)
    for start in track(starts, description=f"embedding {what} questions", disable=len(starts) < 3, transient=True):
        chunk = texts[start : start + EMBED_BATCH]
        vectors = embedder.encode(chunk)
        if keep is not None and sum(map(len, keep)) < MAHALANOBIS_MAX_ROWS:
            keep.append(vectors)
        yield vectors, chunk


def _index_part(folder: Path, name: str, emb, texts: list[str], score: str, what: str,
                keep_vectors: bool = False) -> tuple[VectorIndex, ScoreStats, np.ndarray | None]:
    """The index of `texts` (table `name`), the score statistics fitted on their vectors, and the
    vectors when `keep_vectors` (for cross-fitting: at most `CROSS_FIT_MAX` rows)."""
    keep: list[np.ndarray] | None = [] if score != "knn" or keep_vectors else None
    index = VectorIndex.create(folder, name, _batches(emb, texts, keep, what))
    index.refine_factor = refine_factor_for(emb.name)
    vectors = np.concatenate(keep) if keep else None
    return index, (ScoreStats.fit(score, vectors) if score != "knn" else ScoreStats("knn")), (vectors if keep_vectors else None)


def _calibration_plan(texts: list[str], fraction: float, seed: int, where: str) -> tuple[list[str], list[str], int]:
    """(questions to index, questions to place the threshold on, folds): every distinct question both
    ways when cross-fitting, else `split_for_calibration`'s share held out of the index (folds 0)."""
    distinct = distinct_texts(texts)
    folds = calibration_folds(len(distinct), fraction)
    if folds and len(distinct) >= 2:
        return distinct, distinct, folds
    fit, held = split_for_calibration(texts, fraction, seed, where)  # says what to do when there are too few
    return fit, held, 0


def _split_out_of_domain(texts: list[str], contrast: float, fraction: float, seed: int, where: str) -> tuple[list[str], list[str]]:
    """(indexed, held out for the report): all held out without contrast; with it, `fraction` held out
    when there are at least 2 distinct questions (else the one indexed, nothing to report)."""
    if not contrast:
        return [], texts
    if len(set(t.strip() for t in texts if t.strip())) < 2:
        return [t for t in texts if t.strip()], []
    return split_for_calibration(texts, fraction, seed, where)


def fit_gate(in_domain: list[str], out: str | Path, *, embedder: str = "auto", score: str = "knn", k: int = 3, target_tpr: float = 0.95,
             out_of_domain: list[str] | None = None, contrast: float = 1.0, calibration_fraction: float = 0.2, seed: int = 0,
             refusal: str | None = None, refusal_zh: str | None = None, overwrite: bool = False, source: str = "in-domain questions",
             device: str = "cpu", general_questions: bool = False, exclude_topics: set[str] | frozenset[str] = frozenset()) -> FitReport:
    """Fit a gate on `in_domain` questions into folder `out`. With `out_of_domain` examples and `contrast`
    W > 0 (default 1), most of them are indexed too and a question's score becomes its in-domain score
    minus W × its score against them (the rest, held out, are scored for the report); with W = 0 they
    are only scored for the report. `general_questions` adds honed's built-in bilingual pool of general
    questions (the one `honed data add-refusals` draws from, minus `exclude_topics`) to `out_of_domain`."""
    out = Path(out)
    if general_questions:
        out_of_domain = list(out_of_domain or []) + general_pool_texts(exclude_topics)
    if score not in SCORE_KINDS:
        raise ConfigError(f"--score={score}: choose one of {', '.join(SCORE_KINDS)}")
    if k < 1:
        raise ConfigError(f"--k={k}: give at least 1 neighbour")
    if contrast < 0:
        raise ConfigError(f"--contrast={contrast}: give a weight >= 0 (0: out-of-domain questions only scored for the report)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another --out or pass --overwrite")
    if not in_domain:
        raise DataError(f"{source}: no in-domain questions; the gate needs examples of what to let through")
    groups = _group(in_domain, embedder)
    plans = {route: _calibration_plan(texts, calibration_fraction, seed, f"{source} ({route})") for route, texts in groups.items()}
    names = {route: (AUTO_EMBEDDERS[route] if embedder == "auto" else embedder) for route in groups}
    embedders = {spec: load_embedder(spec, device=device) for spec in set(names.values())}  # a missing model fails before writing
    ood_groups = _group(out_of_domain or [], embedder, merge_small=False) if out_of_domain else {}
    if embedder == "auto":  # out-of-domain questions of a script without a route go where the gate sends them
        for route in [r for r in ood_groups if r not in groups]:
            ood_groups.setdefault(next(iter(groups)), []).extend(ood_groups.pop(route))
    report = FitReport(out)
    contrast = contrast if ood_groups else 0.0
    config = {"version": GATE_VERSION if contrast else 1, "contrast": contrast, "embedder": embedder if embedder == "auto" else embedders[embedder].name, "score": score, "k": k,
              "target_tpr": target_tpr, "refusals": _refusals(refusal, refusal_zh), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "calibration": {"fraction": calibration_fraction, "seed": seed, "source": source},
              "general_questions": {"excluded_topics": sorted(exclude_topics)} if general_questions else None, "parts": {}}
    calibration_lines = []
    with atomic_dir(out) as tmp:
        for route, (fit_texts, held, folds) in plans.items():
            emb = embedders[names[route]]
            index, stats, vectors = _index_part(tmp, table_name(route), emb, fit_texts, score, "in-domain", keep_vectors=bool(folds))
            stats.save(tmp / stats_file(route))
            scorer = GatePart(route, emb, index, stats, threshold=float("nan"), contrast=contrast)
            ood_fit, ood_held = _split_out_of_domain(ood_groups.get(route, []), contrast, calibration_fraction, seed, f"out-of-domain questions ({route})")
            if ood_fit:
                scorer.ood_index, scorer.ood_stats, _ = _index_part(tmp, table_name(route, out_of_domain=True), emb, ood_fit, score, "out-of-domain")
                scorer.ood_stats.save(tmp / stats_file(route, out_of_domain=True))
            fold_of = None
            if folds:
                held_scores, fold_of = cross_fitted_scores(score, vectors, k, folds, seed)
                held_scores = held_scores - scorer.contrast_penalty(vectors, k)
            else:
                held_scores = scorer.scores(held, k)
            threshold = threshold_for(held_scores, target_tpr)
            part = PartReport(route, emb.name, index.rows, len(held), threshold, float(np.mean(held_scores >= threshold)),
                              ood_indexed=scorer.ood_index.rows if ood_fit else 0, folds=folds)
            if ood_held:
                _score_ood(part, scorer.scores(ood_held, k), held_scores)
            report.parts.append(part)
            config["parts"][route] = {"embedder": emb.name, "indexed": index.rows, "held_out": len(held), "folds": folds, "threshold": threshold,
                                      "pass_rate": part.pass_rate, "ood_indexed": part.ood_indexed, "ood": part.ood, "auroc": part.auroc,
                                      "fpr": part.fpr, "calibration_mean": float(np.mean(held_scores)), "calibration_std": float(np.std(held_scores))}
            calibration_lines += [json.dumps({"route": route, "text": t, "score": float(s), **({"fold": int(fold_of[i])} if folds else {})}, ensure_ascii=False)
                                  for i, (t, s) in enumerate(zip(held, held_scores))]
        (tmp / CALIBRATION_FILE).write_text("\n".join(calibration_lines) + "\n", encoding="utf-8")
        (tmp / GATE_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def general_pool_texts(exclude_topics: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The built-in general questions (English and Chinese) minus `exclude_topics`; an unknown topic is an error."""
    from honed.data.refusals import builtin_pool, check_topics

    check_topics(exclude_topics)
    return [q.text for q in builtin_pool(set(exclude_topics))]


def _score_ood(part: PartReport, ood_scores: np.ndarray, held_scores: np.ndarray) -> None:
    from sklearn.metrics import roc_auc_score

    part.ood = len(ood_scores)
    part.fpr = float(np.mean(ood_scores >= part.threshold))
    labels = np.r_[np.ones(len(held_scores)), np.zeros(len(ood_scores))]
    part.auroc = float(roc_auc_score(labels, np.r_[held_scores, ood_scores]))


def _refusals(refusal: str | None, refusal_zh: str | None) -> dict[str, str]:
    """`--refusal` alone answers every language; the default is English or Chinese by the question's script."""
    if refusal is None and refusal_zh is None:
        return dict(DEFAULT_REFUSALS)
    return {"latin": refusal or DEFAULT_REFUSALS["latin"], "cjk": refusal_zh or refusal or DEFAULT_REFUSALS["cjk"]}
