"""Quality filtering (19): rules, exact and near duplicates, train/eval overlap, judge scores.

Steps run cheapest first — rules, exact duplicates, near duplicates (MinHash LSH), overlap with
evaluation data, then the judge on what is left — and every removal is recorded with its reason
and, for duplicates, the sample it duplicates and the similarity. The first of a group of
duplicates is the one kept.

>>> from honed.data import Conversation, Message
>>> mk = lambda q, a: Conversation([Message("user", q), Message("assistant", a)], source=q[:12])
>>> data = [mk("What does HbA1c measure?", "Average glucose."), mk("what does HbA1c measure", "Average glucose"),
...         mk("What is TSH?", "A pituitary hormone.")]
>>> result = filter_conversations(data, FilterConfig())
>>> len(result.kept), [(r.reason, r.duplicate_of) for r in result.removals]
(2, [('exact_duplicate', 'What does Hb')])
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from honed.data.conversation import Conversation
from honed.data.quality.minhash import LSHIndex, normalize, shingles
from honed.data.quality.rules import rule_violation, sample_text
from honed.errors import ConfigError
from honed.utils.strict import StrictModel

Part = Literal["all", "prompt", "answer"]


class DedupConfig(StrictModel):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of character 5-grams")
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(5, ge=1)
    # The user turns by default: distinct questions that share an answer (every out-of-domain
    # question gets the same refusal) are not duplicates, while the same question asked twice is.
    text: Part = Field("prompt", description="what is compared: prompt (user turns), answer, or all")


class RulesConfig(StrictModel):
    text: Part = "all"
    empty_answer: bool = Field(True, description="drop samples with an empty assistant turn (the model would learn to answer nothing)")
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, gt=0)
    min_answer_chars: int | None = Field(None, ge=0)
    languages: list[str] = Field(default_factory=list, description="keep only these (en, zh, ja, ko, ru, ar)")
    drop_regex: list[str] = Field(default_factory=list)
    require_regex: list[str] = Field(default_factory=list)

    @field_validator("drop_regex", "require_regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        # A bad pattern is a config error naming the key, not a re.error deep in filtering.
        for rx in patterns:
            try:
                re.compile(rx)
            except re.error as err:
                raise ValueError(f"{rx!r} is not a valid regular expression ({err})") from None
        return patterns


class OverlapConfig(StrictModel):
    eval: list[str] = Field(default_factory=list, description="evaluation files whose prompts must not be trained on")
    threshold: float = Field(0.8, gt=0, le=1)
    text: Part = "prompt"


class JudgeConfig(StrictModel):
    generator: dict
    threshold: float = Field(0.6, ge=0, le=1, description="keep samples scoring at least this (0–1)")
    template: str | None = None
    on_failure: Literal["keep", "drop"] = "keep"


class FilterConfig(StrictModel):
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    overlap: OverlapConfig | None = None
    judge: JudgeConfig | None = None

    @classmethod
    def parse(cls, raw: dict | None, where: str = "filter") -> "FilterConfig":
        try:
            return cls.model_validate(raw or {})
        except ValidationError as err:
            lines = [f"  {where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
            raise ConfigError(f"{where}: invalid filter config\n" + "\n".join(lines)) from None


@dataclass
class Removal:
    index: int
    source: str
    reason: str        # rule name, exact_duplicate, near_duplicate, eval_overlap, judge_score, judge_failed
    detail: str = ""
    duplicate_of: str | None = None
    similarity: float | None = None
    score: float | None = None


@dataclass
class FilterResult:
    kept: list[Conversation]
    removals: list[Removal] = field(default_factory=list)
    n_in: int = 0
    scores: dict[int, float | None] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.removals:
            out[r.reason] = out.get(r.reason, 0) + 1
        return out

    def report(self, config: FilterConfig | None = None) -> dict:
        """The report file's content: totals, counts per reason, and every removal."""
        return {"input": self.n_in, "kept": len(self.kept), "removed": len(self.removals), "by_reason": self.counts(),
                "removals": [asdict(r) for r in self.removals],
                "config": config.model_dump(mode="json") if config else None}


def _digest(text: str) -> str:
    return hashlib.sha1(normalize(text).encode("utf-8")).hexdigest()


def filter_conversations(convs: list[Conversation], cfg: FilterConfig, eval_convs: list[Conversation] | None = None,
                         judge=None) -> FilterResult:
    """Apply `cfg` in order; `judge` is a generator (built from cfg.judge when None and configured)."""
    result = FilterResult(kept=[], n_in=len(convs))
    alive = list(range(len(convs)))

    def drop(i: int, reason: str, **kw) -> None:
        result.removals.append(Removal(i, convs[i].source, reason, **kw))

    survivors = []
    for i in alive:
        bad = rule_violation(convs[i], cfg.rules)
        if bad:
            drop(i, bad[0], detail=bad[1])
        else:
            survivors.append(i)
    alive = survivors

    d = cfg.dedup
    if d.exact or d.near:
        seen: dict[str, int] = {}
        index = LSHIndex(d.threshold, d.num_perm, d.ngram) if d.near else None
        survivors = []
        for i in alive:
            text = sample_text(convs[i], d.text)
            digest = _digest(text)
            if d.exact and digest in seen:
                first = seen[digest]
                drop(i, "exact_duplicate", detail="same text after normalisation", duplicate_of=convs[first].source, similarity=1.0)
                continue
            grams = shingles(text, d.ngram) if index is not None else None
            hits = index.query(text, grams) if index is not None else []
            if hits:
                first, sim = hits[0]
                drop(i, "near_duplicate", detail=f"Jaccard {sim:.2f} ≥ {d.threshold}", duplicate_of=convs[first].source, similarity=sim)
                continue
            seen.setdefault(digest, i)
            if index is not None:
                index.add(i, text, grams)
            survivors.append(i)
        alive = survivors

    if cfg.overlap is not None and eval_convs:
        o = cfg.overlap
        index = LSHIndex(o.threshold)
        exact = {}
        for j, ec in enumerate(eval_convs):
            text = sample_text(ec, o.text)
            exact.setdefault(_digest(text), j)
            index.add(j, text)
        survivors = []
        for i in alive:
            text = sample_text(convs[i], o.text)
            j = exact.get(_digest(text))
            hits = [(j, 1.0)] if j is not None else index.query(text)
            if hits:
                drop(i, "eval_overlap", detail=f"{o.text} overlaps evaluation data", duplicate_of=eval_convs[hits[0][0]].source,
                     similarity=hits[0][1])
            else:
                survivors.append(i)
        alive = survivors

    if cfg.judge is not None:
        from honed.data.generators import DryRunGenerator, make_generator
        from honed.data.quality.judge import judge_scores

        judge = judge or make_generator(cfg.judge.generator, "filter.judge.generator")
        scores = judge_scores([convs[i] for i in alive], judge, cfg.judge.template)
        survivors = []
        for i, score in zip(alive, scores):
            result.scores[i] = score
            if score is None:
                if cfg.judge.on_failure == "drop" and not isinstance(judge, DryRunGenerator):  # a dry run scores nothing
                    drop(i, "judge_failed", detail="the judge's reply held no score")
                    continue
            elif score < cfg.judge.threshold:
                drop(i, "judge_score", detail=f"{score:.2f} < {cfg.judge.threshold}", score=score)
                continue
            survivors.append(i)
        alive = survivors

    result.kept = [convs[i] for i in alive]
    result.removals.sort(key=lambda r: r.index)
    return result
