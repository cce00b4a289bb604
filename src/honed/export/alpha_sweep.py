"""Choose how much of a fine-tune to keep: interpolate at several alphas, `honed eval` each, recommend one.

For each alpha the interpolated model is written to `OUT/alpha-A/`; one `honed eval` run over all
of them (the given eval config, its models replaced) measures in-domain quality (ROUGE-L of
in-domain answers), the out-of-domain refusal rate (refusal recall: refused share of the
questions that should be refused), the false-refusal rate (in-domain questions refused) and the
general-ability accuracy. The table goes to `OUT/sweep.json`, the plot to `OUT/sweep.png`.

The recommendation rule (printed with the result): among the alphas whose out-of-domain refusal
rate is at least `refusal_target`, whose false-refusal rate is at most `false_refusal_limit` and
whose in-domain quality is at least `quality_share` of the best alpha's, the smallest — the one
closest to the base, which keeps the most general ability. When none qualifies: the alpha with
the best harmonic mean of in-domain quality, refusal rate, 1 - false-refusal rate and (when
measured) general accuracy.

>>> points = [SweepPoint(0.0, 0.10, 0.2, 0.0, 0.9), SweepPoint(0.5, 0.38, 0.95, 0.03, 0.8),
...           SweepPoint(1.0, 0.40, 1.0, 0.10, 0.6)]
>>> recommend(points).alpha
0.5
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from honed.errors import ConfigError
from honed.eval.sweep_driver import SweepStep, run_steps, write_outputs
from honed.utils.fs import save_figure_atomic

log = logging.getLogger(__name__)

QUALITY_METRIC = "rougeL"


@dataclass
class SweepPoint:
    """What `honed eval` measured at one alpha (None where the eval did not measure it)."""

    alpha: float
    in_domain_quality: float | None
    ood_refusal_rate: float | None
    false_refusal_rate: float | None
    general_accuracy: float | None = None
    model_dir: str | None = None


@dataclass
class Recommendation:
    alpha: float | None
    reason: str
    rule: str


@dataclass
class SweepResult:
    points: list[SweepPoint]
    recommendation: Recommendation
    out_dir: Path
    table: Path | None = None
    plot: Path | None = None
    eval_dir: Path | None = None
    settings: dict = field(default_factory=dict)


def parse_alphas(text: str) -> list[float]:
    """"0,0.25,0.5" → [0.0, 0.25, 0.5] (sorted, duplicates refused).

    >>> parse_alphas("1, 0.5,0")
    [0.0, 0.5, 1.0]
    """
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {text!r}: give comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if len(values) < 2 or len(set(values)) != len(values) or any(math.isnan(v) for v in values):
        raise ConfigError(f"--sweep {text!r}: give at least two different alphas, e.g. 0,0.5,1")
    return sorted(values)


def rule_text(refusal_target: float, false_refusal_limit: float, quality_share: float) -> str:
    return (f"the smallest alpha with out-of-domain refusal >= {refusal_target:.0%}, false refusal <= {false_refusal_limit:.0%} "
            f"and in-domain {QUALITY_METRIC} >= {quality_share:.0%} of the best alpha's; if none qualifies, the best harmonic "
            "mean of in-domain quality, refusal rate, 1 - false refusal and general accuracy (when measured)")


def _harmonic(values: list[float]) -> float:
    return 0.0 if any(v <= 0 for v in values) else len(values) / sum(1.0 / v for v in values)


def recommend(points: list[SweepPoint], *, refusal_target: float = 0.9, false_refusal_limit: float = 0.05,
              quality_share: float = 0.9) -> Recommendation:
    """Apply the stated rule to the measured points."""
    rule = rule_text(refusal_target, false_refusal_limit, quality_share)
    qualities = [p.in_domain_quality for p in points if p.in_domain_quality is not None]
    best_quality = max(qualities) if qualities else None
    for p in sorted(points, key=lambda p: p.alpha):
        if None in (p.ood_refusal_rate, p.false_refusal_rate):
            continue
        quality_ok = best_quality is None or (p.in_domain_quality or 0.0) >= quality_share * best_quality
        if p.ood_refusal_rate >= refusal_target and p.false_refusal_rate <= false_refusal_limit and quality_ok:
            return Recommendation(p.alpha, f"alpha={p.alpha:g} is the smallest that meets every condition", rule)
    scored = []
    for p in points:
        parts = [p.in_domain_quality, p.ood_refusal_rate,
                 None if p.false_refusal_rate is None else 1.0 - p.false_refusal_rate, p.general_accuracy]
        measured = [v for v in parts if v is not None]
        if measured:
            scored.append((_harmonic(measured), -p.alpha, p))
    if not scored:
        return Recommendation(None, "the evaluation measured none of the criteria (does its data have `kind` splits and references?)", rule)
    best = max(scored, key=lambda s: (s[0], s[1]))
    return Recommendation(best[2].alpha, f"no alpha meets every condition; alpha={best[2].alpha:g} has the best harmonic "
                                         f"mean ({best[0]:.3f})", rule)


def point_from_metrics(alpha: float, metrics: dict, model_dir: str | None = None) -> SweepPoint:
    """Read one model's metrics of a `honed eval` report into a sweep point."""
    generation = metrics.get("generation") or {}
    domain = metrics.get("domain") or {}
    general = metrics.get("general") or {}
    refused = None
    if domain and any(split in domain.get("per_split", {}) for split in ("out_of_domain", "near_domain")):
        refused = domain.get("refusal_recall")
    return SweepPoint(alpha, generation.get(QUALITY_METRIC), refused, domain.get("false_refusal_rate"),
                      general.get("accuracy"), model_dir)


def plot_sweep(points: list[SweepPoint], recommended: float | None, path: Path) -> Path:
    """The four measures against alpha, the recommended alpha marked; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    alphas = [p.alpha for p in points]
    series = (("in-domain quality (ROUGE-L)", "in_domain_quality", "o-"), ("out-of-domain refusal rate", "ood_refusal_rate", "s-"),
              ("false-refusal rate", "false_refusal_rate", "v--"), ("general-ability accuracy", "general_accuracy", "d-"))
    for label, key, style in series:
        values = [getattr(p, key) for p in points]
        if any(v is not None for v in values):
            ax.plot(alphas, [float("nan") if v is None else v for v in values], style, label=label)
    if recommended is not None:
        ax.axvline(recommended, color="grey", linestyle=":", label=f"recommended alpha={recommended:g}")
    ax.set_xlabel("alpha (0 = base, 1 = tuned)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("base ↔ tuned interpolation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure_atomic(fig, path, dpi=100)


def sweep_eval_config(eval_config: str | Path, overrides: list[str] | None, model_dirs: dict[float, Path],
                      out_dir: Path, general: bool):
    """The user's eval config with its models replaced by the interpolated ones (alpha 0 as baseline)."""
    from honed.config import read_yaml_config
    from honed.eval.config import _resolve, eval_config_from_dict

    path = Path(eval_config)
    raw = read_yaml_config(path, overrides, kind="eval config")
    # Highest alpha first: `honed eval` treats the first model as the one evaluated. The config's
    # own `models` (if any) are replaced, so a data-only eval config serves too.
    raw["models"] = [{"path": str(d.resolve()), "name": f"alpha={a:g}"} for a, d in sorted(model_dirs.items(), reverse=True)]
    raw["baseline"] = "alpha=0" if 0.0 in model_dirs else None
    raw["output_dir"], raw["overwrite"] = str((out_dir / "eval").resolve()), True
    raw["fitting"] = {**(raw.get("fitting") or {}), "checkpoints": "none"}
    if general:
        raw["general"] = {**(raw.get("general") or {}), "enabled": True}
    return _resolve(eval_config_from_dict(raw, str(path)), path.parent)


def run_sweep(base: str | Path, tuned: str | Path, alphas: list[float], eval_config: str | Path, out_dir: str | Path, *,
              overrides: list[str] | None = None, overwrite: bool = False, general: bool = True,
              refusal_target: float = 0.9, false_refusal_limit: float = 0.05, quality_share: float = 0.9,
              show_progress: bool = True) -> SweepResult:
    """Interpolate at each alpha, evaluate them all with one `honed eval` run, recommend an alpha."""
    import gc
    import shutil

    from honed.eval.runner import evaluate
    from honed.export.interpolate import Interpolation, check_output

    out = check_output(out_dir, overwrite, inputs=(base, tuned, eval_config))
    if out.is_dir() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    pair = Interpolation(base, tuned)
    model_dirs = {a: out / f"alpha-{a:g}" for a in alphas}
    steps = [SweepStep(f"alpha={a:g}", lambda a=a: pair.save(a, model_dirs[a]), detail=f"W_base + {a:g}·(W_tuned − W_base)")
             for a in alphas]

    def evaluate_all(chosen: list[SweepStep]) -> dict[str, dict]:
        nonlocal pair
        pair = None  # the interpolation's weights are freed before the models are evaluated
        gc.collect()
        cfg = sweep_eval_config(eval_config, overrides, model_dirs, out, general)
        report = evaluate(cfg, show_progress=show_progress).report
        return {m["name"]: m["metrics"] for m in report["models"]}

    by_name = run_steps(steps, evaluate_all, per_point=False, verb="interpolating", logger=log)
    points = [point_from_metrics(a, by_name[f"alpha={a:g}"], str(model_dirs[a])) for a in alphas]
    rec = recommend(points, refusal_target=refusal_target, false_refusal_limit=false_refusal_limit, quality_share=quality_share)
    settings = {"base": str(base), "tuned": str(tuned), "eval_config": str(eval_config), "quality_metric": QUALITY_METRIC,
                "refusal_target": refusal_target, "false_refusal_limit": false_refusal_limit, "quality_share": quality_share}
    table = json.dumps({"settings": settings, "points": [asdict(p) for p in points],
                        "recommended_alpha": rec.alpha, "reason": rec.reason, "rule": rec.rule}, indent=2)
    write_outputs(out, {"sweep.json": table}, lambda path: plot_sweep(points, rec.alpha, path))
    return SweepResult(points, rec, out, out / "sweep.json", out / "sweep.png", out / "eval", settings)
