"""Materialise a recipe over data files: `honed data augment RECIPE.yaml` from Python.

Each augmented sample gets `meta["augmented_from"]` (the original's file:line), so `honed data
stats` can show originals and their variants side by side. The output is written atomically and
an existing file is never replaced unless `overwrite=True`.

>>> result = augment_files("recipe.yaml", output="out.jsonl")   # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from honed.data.augment.io import read_conversations, write_conversations
from honed.utils.fs import check_writable
from honed.data.augment.recipe import AugmentStats, Recipe
from honed.data.conversation import Conversation
from honed.errors import ConfigError


@dataclass
class AugmentRun:
    inputs: list[str]
    output: str | None
    samples: list[Conversation]
    stats: AugmentStats
    prompts: list = field(default_factory=list)  # (step name, messages) in a dry run


def load_recipe_dict(spec) -> tuple[dict, Path]:
    """(recipe mapping, folder its relative paths are relative to)."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec), Path.cwd()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return ({"steps": raw} if isinstance(raw, list) else raw or {}), path.parent


def dry_run_config(cfg: dict) -> dict:
    """The same recipe with every generator replaced by a dry run: prompts are built, nothing is called."""
    out = copy.deepcopy(cfg)
    if out.get("generator") is not None:
        out["generator"] = {"kind": "dry_run"}
    for step in out.get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("params"), dict) and "generator" in step["params"]:
            step["params"]["generator"] = {"kind": "dry_run"}
    return out


def augment_files(recipe, inputs=None, output=None, *, seed: int | None = None, epoch: int = 0,
                  overwrite: bool = False, dry_run: bool = False) -> AugmentRun:
    """Apply a recipe (file or mapping) to its `input:` files (or `inputs`), write to `output`."""
    cfg, base = load_recipe_dict(recipe)
    where = str(recipe) if not isinstance(recipe, dict) else "augment"
    # Paths written in the recipe are relative to the recipe's folder; paths given as flags to the cwd.
    if inputs is None:
        inputs = cfg.get("input")
        inputs = [str(base / p) for p in ([inputs] if isinstance(inputs, str) else inputs or [])]
    if output is None and cfg.get("output") is not None:
        output = str(base / cfg["output"])
    if not inputs:
        raise ConfigError(f"{where}: no input data; give `input:` in the recipe or --input FILE")
    if output is None and not dry_run:
        raise ConfigError(f"{where}: no output path; give `output:` in the recipe or --output FILE")
    if output is not None and not dry_run:
        check_writable(output, overwrite)  # fail before the (possibly slow) work, not after
    built = Recipe.from_config(dry_run_config(cfg) if dry_run else cfg, where)
    seed = seed if seed is not None else built.seed
    if seed is None:
        raise ConfigError(f"{where}.seed: set a seed in the recipe or pass --seed (augmentation is always seeded)")
    originals = read_conversations(inputs)
    tagged = [Conversation(c.messages, c.source, {**c.meta, "_origin": i}, c.origin) for i, c in enumerate(originals)]
    stats = AugmentStats()
    out = built.apply(tagged, seed=seed, epoch=epoch, stats=stats)
    for c in out:
        origin = c.meta.pop("_origin", None) if c.meta.get("augmentations") else None
        if origin is not None:
            c.meta["augmented_from"] = originals[origin].source
    prompts = [(s.name, p) for s in built.steps for p in getattr(getattr(s.transform, "generator", None), "prompts", [])]
    if output is not None and not dry_run:
        write_conversations(output, out, overwrite=overwrite)
    return AugmentRun(inputs, output, out, stats, prompts)
