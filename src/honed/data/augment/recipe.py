"""A Recipe: an ordered list of augmentation steps, each drawn with a probability, fully seeded.

Schema (YAML, or the same dict under a training config's `data.augment` key):

    input: data/train.jsonl    # for `honed data augment` (a path or a list; relative to the recipe file)
    output: data/train.aug.jsonl
    seed: 1234                 # default seed when apply() is given none
    on_unfit: error            # error | skip — default for every step
    keep_original: false       # true: emit each original sample, then its augmented copies
    copies: 1                  # augmented copies per sample (each with its own draws)
    generator: {kind: openai, base_url: http://127.0.0.1:8000/v1, model: NAME}   # optional, for
                               # the generator steps (synthetic, paraphrase) that set none
    labels:                    # classification label set (needed by label-aware transforms)
      positive: [积极, 正面, 乐观, positive, favourable]
      negative: [消极, 负面, 悲观, negative, unfavourable]
      neutral:  [中性, 中立, 一般, neutral, mixed]
    steps:
      - name: label_synonym    # registry name (see honed.data.augment.available())
        probability: 0.5       # chance that this step runs on a sample (default 1.0)
        params: {}             # the transform's own parameters
        on_unfit: skip         # overrides the recipe default for this step
        only: {source: "sentiment*", label: [positive, negative]}   # optional filter

A bare list of steps is accepted too. Every draw comes from a Random seeded by
(seed, epoch, sample index, copy, step), so a sample's augmentation does not depend on the other
samples, on their order of processing, or on steps added after it.

>>> r = Recipe.from_config([{"name": "system_prompt", "params": {"prompt": "You are concise."}}])
>>> from honed.data import Conversation, Message
>>> r.apply([Conversation([Message("user", "hi"), Message("assistant", "hello")])], seed=1)[0].roles()
['system', 'user', 'assistant']
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from honed.data.augment.base import Transform, Unfit, get_transform
from honed.data.augment.labelset import LabelSet
from honed.data.conversation import Conversation
from honed.errors import ConfigError

RECIPE_KEYS = ("seed", "on_unfit", "keep_original", "copies", "labels", "generator", "steps", "input", "output")
STEP_KEYS = ("name", "params", "probability", "on_unfit", "only")
ON_UNFIT = ("error", "skip")
GENERATOR_STEPS = ("synthetic", "paraphrase")
MAX_NOTED = 20  # unfit sources kept per step for the report; counts are always complete


@dataclass
class Step:
    """One recipe entry: a built transform plus when it runs."""

    transform: Transform
    probability: float = 1.0
    on_unfit: str = "error"
    only: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.transform.name

    def selects(self, sample: Conversation) -> bool:
        """The `only:` filter: source glob(s) and/or label values."""
        src = self.only.get("source")
        if src is not None:
            globs = [src] if isinstance(src, str) else list(src)
            if not any(fnmatch.fnmatch(sample.source, g) for g in globs):
                return False
        labels = self.only.get("label")
        if labels is not None:
            want = [labels] if isinstance(labels, str) else list(labels)
            raw = sample.meta.get("label")
            key = self.transform.labels.key_of(raw) if self.transform.labels is not None else raw
            if raw not in want and key not in want:
                return False
        return True


@dataclass
class StepStats:
    """What one step did over a run (the future HTML stats page reads `AugmentStats.to_dict()`)."""

    name: str
    applied: int = 0        # the transform ran and changed the sample / generated samples
    unchanged: int = 0      # it ran but found nothing to change (e.g. no dictionary word)
    not_drawn: int = 0      # the probability draw said no
    filtered: int = 0       # the `only:` filter excluded the sample
    unfit_skipped: int = 0  # Unfit with on_unfit: skip
    generated: int = 0      # new samples created by expanding transforms
    unfit_examples: list[str] = field(default_factory=list)


@dataclass
class AugmentStats:
    samples_in: int = 0
    samples_out: int = 0
    steps: list[StepStats] = field(default_factory=list)

    @property
    def unfit_skipped(self) -> int:
        return sum(s.unfit_skipped for s in self.steps)

    def to_dict(self) -> dict:
        return {"samples_in": self.samples_in, "samples_out": self.samples_out,
                "steps": [vars(s).copy() for s in self.steps]}


class Recipe:
    """Ordered augmentation steps; `apply(samples, seed, epoch)` is a pure function of its inputs."""

    def __init__(self, steps: list[Step], labels: LabelSet | None = None, seed: int | None = None,
                 keep_original: bool = False, copies: int = 1, config: dict | None = None):
        self.steps = steps
        self.labels = labels
        self.seed = seed
        self.keep_original = keep_original
        self.copies = copies
        self.config = config or {}

    # --- parsing ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg, where: str = "augment") -> "Recipe":
        """Build from a dict (or bare list of steps); every bad key raises ConfigError naming it."""
        if isinstance(cfg, list):
            cfg = {"steps": cfg}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: expected a mapping with `steps:` or a list of steps, got {type(cfg).__name__}")
        for key in cfg:
            if key not in RECIPE_KEYS:
                raise ConfigError(f"{where}.{key}: unknown recipe key; valid: {', '.join(RECIPE_KEYS)}")
        on_unfit = cfg.get("on_unfit", "error")
        if on_unfit not in ON_UNFIT:
            raise ConfigError(f"{where}.on_unfit: {on_unfit!r} is not one of error, skip")
        copies = cfg.get("copies", 1)
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise ConfigError(f"{where}.copies: expected an integer ≥ 1, got {copies!r}")
        seed = cfg.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigError(f"{where}.seed: expected an integer, got {seed!r}")
        labels = LabelSet.from_config(cfg["labels"], f"{where}.labels") if cfg.get("labels") is not None else None
        raw_steps = cfg.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ConfigError(f"{where}.steps: expected a non-empty list of {{name, params, probability}}")
        generator = cfg.get("generator")
        steps = [cls._step(s, f"{where}.steps[{i}]", labels, on_unfit, generator) for i, s in enumerate(raw_steps)]
        return cls(steps, labels, seed, bool(cfg.get("keep_original", False)), copies, config=cfg)

    @staticmethod
    def _step(raw, where: str, labels, default_on_unfit: str, generator=None) -> Step:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{where}: expected a mapping with at least `name:`, got {raw!r}")
        for key in raw:
            if key not in STEP_KEYS:
                raise ConfigError(f"{where}.{key}: unknown step key; valid: {', '.join(STEP_KEYS)}")
        p = raw.get("probability", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"{where}.probability: expected a number in [0, 1], got {p!r}")
        on_unfit = raw.get("on_unfit", default_on_unfit)
        if on_unfit not in ON_UNFIT:
            raise ConfigError(f"{where}.on_unfit: {on_unfit!r} is not one of error, skip")
        only = raw.get("only") or {}
        if not isinstance(only, dict) or set(only) - {"source", "label"}:
            raise ConfigError(f"{where}.only: expected a mapping with `source:` and/or `label:`, got {only!r}")
        params = raw.get("params")
        if generator is not None and raw["name"] in GENERATOR_STEPS and "generator" not in (params or {}):
            params = {**(params or {}), "generator": generator}  # the recipe's generator is every step's default
        transform = get_transform(raw["name"], params, labels=labels, where=f"{where}.params")
        return Step(transform, float(p), on_unfit, only)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path, where: str | None = None) -> "Recipe":
        """Load a recipe file (or YAML text)."""
        text, name = str(path_or_text), where or "augment"
        if isinstance(path_or_text, Path) or (len(text) < 4096 and "\n" not in text and Path(text).is_file()):
            name = where or str(path_or_text)
            text = Path(path_or_text).read_text(encoding="utf-8")
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{name}: not valid YAML: {err}") from None
        return cls.from_config(cfg, name)

    # --- running ---------------------------------------------------------------------------

    def apply(self, samples, seed: int | None = None, epoch: int = 0,
              stats: AugmentStats | None = None) -> list[Conversation]:
        """Augmented samples, identical for the same (samples, seed, epoch); inputs are not mutated.

        Each sample is followed by the new samples its expanding steps created (those pass
        through the remaining steps too). Pass an AugmentStats to receive counts.
        """
        seed = self.seed if seed is None else seed
        if seed is None:
            raise ConfigError("augment.seed: no seed given to apply() and none in the recipe")
        stats = stats if stats is not None else AugmentStats()
        if not stats.steps:
            stats.steps = [StepStats(s.name) for s in self.steps]
        samples = list(samples)
        for step in self.steps:
            step.transform.observe(samples)
        out: list[Conversation] = []
        for i, sample in enumerate(samples):
            stats.samples_in += 1
            if self.keep_original:
                out.append(sample)
            for c in range(self.copies):
                for result in self._run(sample, 0, f"{seed}/{epoch}/{i}/{c}", stats):
                    # An untouched copy beside its original would only duplicate it.
                    if not (self.keep_original and result is sample):
                        out.append(result)
        stats.samples_out += len(out)
        return out

    def _run(self, sample: Conversation, start: int, path: str, stats: AugmentStats) -> list[Conversation]:
        current, extra = sample, []
        for j in range(start, len(self.steps)):
            step, st = self.steps[j], stats.steps[j]
            # A Random per (path, step): adding/removing a step never shifts another step's draws.
            rng = random.Random(f"{path}/{j}")
            if not step.selects(current):
                st.filtered += 1
                continue
            if rng.random() >= step.probability:
                st.not_drawn += 1
                continue
            try:
                result = step.transform(current, rng)
            except Unfit as err:
                if step.on_unfit == "error":
                    raise Unfit(f"{err} [recipe step {j}: {step.name}; fix the data, add an `only:` filter, "
                                f"or set on_unfit: skip to pass and count such samples]") from None
                st.unfit_skipped += 1
                if len(st.unfit_examples) < MAX_NOTED:
                    st.unfit_examples.append(str(err))
                continue
            if step.transform.expands:
                if not result:
                    st.unchanged += 1
                    continue
                st.applied += 1
                st.generated += len(result)
                for k, new in enumerate(result):
                    extra.extend(self._run(new, j + 1, f"{path}/{j}.{k}", stats))
            elif result.messages == current.messages:
                st.unchanged += 1
            else:
                st.applied += 1
                current = result
        return [current, *extra]

    def __repr__(self) -> str:
        return f"Recipe({[s.name for s in self.steps]})"
