"""The out-of-domain gate: a question is let through to the LLM only if it looks like the domain.

A gate folder holds `gate.json` (embedder, score kind, k, threshold, calibration split and stats,
version), the LanceDB index of in-domain questions (`index.lance`, or one `index-<route>.lance`
per script for the bilingual `auto` gate; `…-ood.lance` beside it when out-of-domain examples were
given, see `GatePart`), and `calibration.jsonl` (the in-domain scores the threshold was placed
on — out-of-fold or held out — the reference for `guard drift`). The `auto` gate routes Latin-script
questions to all-MiniLM-L6-v2 and Chinese/CJK ones to the `zh-words` embedder (jieba content words),
each with its own threshold: the small default model is English-only (measured in README: AUROC
0.78 on Chinese held-out questions).

>>> gate = load_gate("runs/gate")  # doctest: +SKIP
>>> gate.check("What does HbA1c measure?")  # doctest: +SKIP
GateDecision(in_domain=True, score=0.71, threshold=0.52, route='latin')
>>> gate.refusal_for("比特币还会涨吗？")  # doctest: +SKIP
'抱歉，这个问题超出了我能回答的范围……'
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honed.guard.calibration import ScoreStats
from honed.guard.embedders import Embedder, load_embedder
from honed.guard.index import GateError, GateIndexError, VectorIndex, refine_factor_for
from honed.guard.routing import script_of

log = logging.getLogger(__name__)

GATE_FILE = "gate.json"
CALIBRATION_FILE = "calibration.jsonl"
GATE_VERSION = 2  # 2: out-of-domain examples indexed and subtracted (`contrast`); a gate without them is written as 1
AUTO_EMBEDDERS = {"latin": "default", "cjk": "zh-words"}  # the measured best per script (README); a gate stores each route's own
DEFAULT_REFUSALS = {
    "latin": "Sorry, that question is outside what I can help with. Please ask about this assistant's subject.",
    "cjk": "抱歉，这个问题超出了我能回答的范围，请提出与本领域相关的问题。",
}

__all__ = ["Gate", "GateDecision", "GateError", "GateIndexError", "GateMismatchError", "load_gate", "embedder_spec"]


class GateMismatchError(GateError):
    """The gate was fitted with another embedder than the one asked for."""


@dataclass
class GateDecision:
    in_domain: bool
    score: float
    threshold: float
    route: str = "all"

    def as_dict(self) -> dict:
        return {"in_domain": self.in_domain, "score": round(self.score, 6), "threshold": round(self.threshold, 6), "route": self.route}


def embedder_spec(name: str) -> str:
    """The `load_embedder` argument that rebuilds an embedder from its stored name."""
    return name[3:] if name.startswith("st:") else name


def table_name(route: str, out_of_domain: bool = False) -> str:
    name = "index" if route == "all" else f"index-{route}"
    return f"{name}-ood" if out_of_domain else name


def stats_file(route: str, out_of_domain: bool = False) -> str:
    return f"stats-{route}-ood.npz" if out_of_domain else f"stats-{route}.npz"


@dataclass
class GatePart:
    """One route of a gate: its embedder, index, score statistics and threshold, and, for a gate fitted
    with out-of-domain examples, their index and statistics and the `contrast` weight W: the score is
    then the in-domain score minus W × the same score against the out-of-domain examples, so that a
    question near both (a dose request among lab questions) falls below one near the domain alone."""

    route: str
    embedder: Embedder
    index: VectorIndex
    stats: ScoreStats
    threshold: float
    ood_index: VectorIndex | None = None
    ood_stats: ScoreStats | None = None
    contrast: float = 0.0

    def score_vectors(self, vectors: np.ndarray, k: int) -> np.ndarray:
        return self.stats.score(vectors, self.index, k) - self.contrast_penalty(vectors, k)

    def contrast_penalty(self, vectors: np.ndarray, k: int) -> np.ndarray | float:
        """W × the score against the out-of-domain examples (0 without them)."""
        if self.ood_index is None or not self.contrast:
            return 0.0
        return self.contrast * self.ood_stats.score(vectors, self.ood_index, k)

    def scores(self, texts: list[str], k: int) -> np.ndarray:
        return self.score_vectors(self.embedder.encode(texts), k)


class Gate:
    """A fitted gate, ready to check questions; build one with `fit_gate`, reopen it with `load_gate`."""

    def __init__(self, folder: Path, config: dict, parts: dict[str, GatePart]):
        self.folder, self.config, self.parts = folder, config, parts
        self.k = int(config.get("k", 3))
        self.score_kind = config["score"]
        self.embedder_name = config["embedder"]
        self._refusals = config.get("refusals") or DEFAULT_REFUSALS

    @property
    def refusal(self) -> str:
        """The refusal answer for Latin-script (English) questions."""
        return self._refusals.get("latin") or next(iter(self._refusals.values()))

    def refusal_for(self, text: str) -> str:
        """The refusal in the question's script: Chinese for Chinese questions, else English."""
        return self._refusals.get(script_of(text)) or self.refusal

    def route_of(self, text: str) -> str:
        if "all" in self.parts:
            return "all"
        route = script_of(text)
        return route if route in self.parts else next(iter(self.parts))

    def check(self, text: str) -> GateDecision:
        """Decide one question."""
        return self.check_many([text])[0]

    def check_many(self, texts: list[str]) -> list[GateDecision]:
        """Decide many questions, each route's questions embedded and searched as one batch."""
        decisions: list[GateDecision | None] = [None] * len(texts)
        by_route: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            by_route.setdefault(self.route_of(text), []).append(i)
        for route, rows in by_route.items():
            part = self.parts[route]
            scores = part.scores([texts[i] for i in rows], self.k)
            for i, score in zip(rows, scores):
                decisions[i] = GateDecision(bool(score >= part.threshold), float(score), part.threshold, route)
        return decisions  # type: ignore[return-value]


def read_gate_config(folder: str | Path) -> dict:
    """gate.json of a gate folder, checked; a missing or damaged one is a `GateError` naming it."""
    folder = Path(folder)
    path = folder / GATE_FILE
    if not path.is_file():
        hint = "the folder does not exist" if not folder.exists() else "it holds no gate.json"
        raise GateError(f"{folder}: not a gate ({hint}); fit one with `honed guard fit --in-domain FILE --out {folder}`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(config, dict) and config["score"] and config["parts"] and config["embedder"]
    except (json.JSONDecodeError, AssertionError, KeyError, UnicodeDecodeError) as err:
        raise GateError(f"{path}: damaged gate file ({type(err).__name__}); fit the gate again") from None
    if config.get("version", 0) > GATE_VERSION:
        raise GateError(f"{path}: gate version {config['version']} is newer than this honed reads ({GATE_VERSION}); upgrade honed")
    return config


def embedder_name(spec: str) -> str:
    """The name an embedder asked for as `spec` will carry, without loading it."""
    if spec in ("default", "minilm", "auto"):
        return "minilm" if spec != "auto" else "auto"
    for kind, size in (("char-ngram", 4096), ("zh-words", 8192)):
        if spec.startswith(kind):
            return spec if ":" in spec else f"{kind}:{size}"
    if spec.startswith("llm:"):
        return f"llm:{Path(spec[4:]).resolve()}"
    return f"st:{Path(spec).resolve()}"


def check_embedder(config: dict, folder: Path, asked: str | None) -> None:
    """Refuse a gate fitted with another embedder than the one asked for."""
    if asked is None or embedder_name(asked) == config["embedder"]:
        return
    raise GateMismatchError(f"{folder}: the gate was fitted with embedder {config['embedder']!r}, not {asked!r}; "
                            f"drop --embedder to use the gate's own, or fit a new gate with --embedder {asked}")


def load_gate(folder: str | Path, *, embedder: str | None = None, device: str = "cpu") -> Gate:
    """Reopen a fitted gate; `embedder`, when given, must be the one it was fitted with."""
    folder = Path(folder)
    config = read_gate_config(folder)
    check_embedder(config, folder, embedder)
    loaded: dict[str, Embedder] = {}
    parts = {}
    for route, info in config["parts"].items():
        name = info["embedder"]
        if name not in loaded:
            loaded[name] = load_embedder(embedder_spec(name), device=device)
        emb = loaded[name]
        if emb.name != name:
            raise GateMismatchError(f"{folder}: route {route} was fitted with embedder {name!r} but loading it gave {emb.name!r}; fit the gate again")
        index = _open_index(folder, route, emb, info.get("indexed"), out_of_domain=False)
        stats = ScoreStats.load(config["score"], folder / stats_file(route))
        part = GatePart(route, emb, index, stats, float(info["threshold"]))
        if info.get("ood_indexed"):
            part.ood_index = _open_index(folder, route, emb, info["ood_indexed"], out_of_domain=True)
            part.ood_stats = ScoreStats.load(config["score"], folder / stats_file(route, out_of_domain=True))
            part.contrast = float(config.get("contrast", 0.0))
        parts[route] = part
    return Gate(folder, config, parts)


def _open_index(folder: Path, route: str, emb: Embedder, rows: int | None, *, out_of_domain: bool) -> VectorIndex:
    name = table_name(route, out_of_domain)
    index = VectorIndex.open(folder, name)
    index.refine_factor = refine_factor_for(emb.name)
    if index.dim != emb.dim or index.rows != (rows if rows is not None else index.rows):
        raise GateIndexError(f"{folder / name}.lance: holds {index.rows} vectors of size {index.dim}, gate.json expects "
                             f"{rows} of size {emb.dim}; the index is damaged or from another gate, fit again")
    return index


def read_calibration(folder: str | Path) -> list[dict]:
    """The held-out in-domain questions and their scores, as stored at fit time."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        raise GateError(f"{path}: missing; fit the gate again")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise GateError(f"{path}:{lineno}: damaged calibration record; fit the gate again") from None
    return rows
