"""Hyper-parameter and model-size sweeps: train + evaluate one run per grid point and compare them
in one table and one plot ("comparison experiments": LoRA vs full, rank, learning rate, base size).

Each point's config is the base config with the point's `key=value` overrides (the same syntax as
`honed train CONFIG key=value`). Each run lives in its own folder named from its overrides, and a
point whose run finished (run_info.json written) and whose evaluation exists is skipped, so an
interrupted sweep goes on where it stopped when run again.

    OUT/<point>/run/   the training run          OUT/sweep.json  sweep.csv  sweep.png
    OUT/<point>/eval/  its evaluation report

>>> parse_grid(["lora.r=8,16", "method=lora,full"])
[('lora.r', ['8', '16']), ('method', ['lora', 'full'])]
>>> [point_name(p) for p in grid_points(parse_grid(["lora.r=8,16"]))]
['lora.r-8', 'lora.r-16']
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from honed.errors import ConfigError, OutputExistsError
from honed.eval.sweep_driver import SweepStep, run_steps
from honed.eval.sweep_driver import write_outputs as write_sweep_files
from honed.utils.fs import save_figure_atomic

log = logging.getLogger(__name__)

SWEEP_SCHEMA = "honed.eval.sweep"
TABLE_METRICS = ("loss", "perplexity", "rougeL", "chrf", "meteor", "exact_match", "accuracy", "macro_f1", "mae", "r2",
                 "out_of_domain_refused", "in_domain_answered", "distinct_2", "self_bleu", "tokens_per_s", "size_mb")


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets/braces/quotes, so `[q_proj,v_proj]` stays one value."""
    values, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    values.append(current.strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`["key=v1,v2", …]` → [(key, [v1, v2]), …]; values stay text (parsed as YAML by the config)."""
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,… (e.g. --grid lora.r=8,16,32)")
        values = [v for v in _split_values(raw) if v]
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value is repeated")
        if any(key == k for k, _ in grid):
            raise ConfigError(f"--grid: {key} is given twice; put all its values in one --grid {key}=V1,V2")
        grid.append((key.strip(), values))
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2")
    return grid


def grid_points(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination of the grid as a list of `key=value` overrides (first key varies slowest)."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(vals for _, vals in grid))]


def point_name(overrides: list[str]) -> str:
    """A folder name for a point: `key-value` parts joined by `_`, unsafe characters replaced.

    >>> point_name(["training.learning_rate=1e-4", "model.name_or_path=/models/Qwen2.5-0.5B"])
    'training.learning_rate-1e-4_model.name_or_path-Qwen2.5-0.5B'
    """
    parts = []
    for item in overrides:
        key, _, value = item.partition("=")
        value = value.rstrip("/").rsplit("/", 1)[-1] if "/" in value else value  # a model path: its folder name
        value = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-.") or "empty"
        parts.append(f"{re.sub(r'[^A-Za-z0-9._-]+', '-', key)}-{value}")
    return "_".join(parts)[:180]


@dataclass
class SweepResult:
    report: dict
    output_dir: Path


def _train_info(run_dir: Path) -> dict:
    try:
        info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    model = info.get("model") or {}
    return {k: model.get(k) for k in ("method", "trainable_params", "total_params", "training_path") if model.get(k) is not None}


def run_sweep(config_path: str | Path, grid: list[tuple[str, list[str]]], output_dir: str | Path, *, eval_raw: dict,
              overrides: list[str] | None = None, metric: str = "rougeL", show_progress: bool = True) -> SweepResult:
    """Train and evaluate every grid point; write sweep.json, sweep.csv and sweep.png into `output_dir`.

    `eval_raw` is a partial eval config (at least `data.path`): each point's run is evaluated with it.
    """
    from honed.config import load_config
    from honed.eval.config import eval_config_from_dict
    from honed.eval.report import LABELS
    from honed.eval.runner import evaluate
    from honed.train.sft import train

    if not (eval_raw.get("data") or {}).get("path"):
        raise ConfigError("honed sweep needs evaluation data: --data FILE (or data.path in --eval-config)")
    out = Path(output_dir)
    points = grid_points(grid)
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points map to the same folder name; make the values differ in more than punctuation")
    # Every point's config and the eval settings are checked before anything trains.
    configs = []
    for point in points:
        try:
            configs.append(load_config(config_path, [*(overrides or []), *point]))
        except ConfigError as err:
            raise ConfigError(f"grid point {' '.join(point)}: {err}") from None
    if any(cfg.stages for cfg in configs):
        raise ConfigError("honed sweep: a staged config (stages:) is not supported; sweep one stage's config")
    eval_config_from_dict({**eval_raw, "models": [{"path": "run"}]}, "sweep eval settings")

    def step(point: list[str], name: str, cfg) -> SweepStep:
        run_dir, report_file = out / name / "run", out / name / "eval" / "report.json"
        cfg.training.output_dir, cfg.training.resume = str(run_dir), False
        cfg.training.overwrite = True  # only ever this point's own unfinished run is replaced

        def earlier_report() -> dict | None:
            return json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else None

        return SweepStep(name, lambda: train(cfg, show_progress=show_progress), built=(run_dir / "run_info.json").is_file(),
                         earlier_result=earlier_report, detail=" ".join(point))

    def evaluate_point(steps: list[SweepStep]) -> dict[str, dict]:
        name = steps[0].name
        raw = {**json.loads(json.dumps(eval_raw)), "models": [{"path": str(out / name / "run"), "name": name}],
               "output_dir": str(out / name / "eval"), "overwrite": True}
        raw.pop("baseline", None)
        return {name: evaluate(eval_config_from_dict(raw, "sweep eval settings"), show_progress=show_progress).report}

    steps = [step(point, name, cfg) for point, name, cfg in zip(points, names, configs)]
    reports = run_steps(steps, evaluate_point, per_point=True, verb="training", logger=log)
    rows = [{"point": s.name, "overrides": dict(p.split("=", 1) for p in point), "run_dir": str(out / s.name / "run"),
             "skipped": s.built, **_train_info(out / s.name / "run"), "metrics": reports[s.name]["models"][0]["summary"]}
            for s, point in zip(steps, points)]
    present = [k for k in TABLE_METRICS if any(k in r["metrics"] for r in rows)]
    sweep = {"schema": SWEEP_SCHEMA, "schema_version": 1, "config": str(config_path), "grid": [[k, v] for k, v in grid],
             "base_overrides": overrides or [], "metric": metric, "points": rows, "columns": present,
             "metric_labels": {k: LABELS.get(k, k) for k in present}}
    write_outputs(sweep, out)
    return SweepResult(sweep, out)


def sweep_csv(sweep: dict) -> str:
    """One row per point: the grid values, training facts, then the metric columns."""
    keys = [k for k, _ in sweep["grid"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["point", *keys, "trainable_params", *sweep["columns"]])
    for r in sweep["points"]:
        writer.writerow([r["point"], *(r["overrides"][k] for k in keys), r.get("trainable_params", ""),
                         *("" if r["metrics"].get(c) is None else repr(r["metrics"][c]) for c in sweep["columns"])])
    return buffer.getvalue()


def sweep_plot(sweep: dict, path: Path) -> Path | None:
    """A bar chart of `sweep["metric"]` per point, written to `path` (None when no point has it)."""
    from honed.eval.plots import _plt

    metric = sweep["metric"]
    points = [(r["point"], r["metrics"][metric]) for r in sweep["points"] if r["metrics"].get(metric) is not None]
    if not points:
        log.warning("sweep plot: no point has the metric %r; no plot written", metric)
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(points) + 2), 3.6))
    labels = [" ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r["overrides"].items()) for r in sweep["points"]
              if r["metrics"].get(metric) is not None]
    ax.bar(range(len(points)), [v for _, v in points], color="#3366cc")
    ax.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(sweep["metric_labels"].get(metric, metric))
    ax.set_title(f"sweep: {sweep['metric_labels'].get(metric, metric)} per point")
    return save_figure_atomic(fig, path, dpi=100)


def write_outputs(sweep: dict, out: Path) -> None:
    """sweep.json, sweep.csv and sweep.png (each written atomically)."""
    write_sweep_files(out, {"sweep.json": json.dumps(sweep, indent=2, ensure_ascii=False), "sweep.csv": sweep_csv(sweep)},
                      lambda path: sweep_plot(sweep, path))


def sweep_table(sweep: dict):
    """A rich Table of the sweep: one row per point, best value of each metric in bold."""
    from rich.table import Table

    from honed.eval.report import HIGHER_IS_BETTER

    keys = [k for k, _ in sweep["grid"]]
    table = Table(title=f"honed sweep: {len(sweep['points'])} points", title_justify="left")
    for k in keys:
        table.add_column(k.rsplit(".", 1)[-1])
    table.add_column("trainable", justify="right")
    for c in sweep["columns"]:
        table.add_column(sweep["metric_labels"].get(c, c), justify="right")
    best = {}
    for c in sweep["columns"]:
        values = [r["metrics"][c] for r in sweep["points"] if r["metrics"].get(c) is not None]
        if values:
            best[c] = max(values) if HIGHER_IS_BETTER.get(c, True) else min(values)
    for r in sweep["points"]:
        cells = []
        for c in sweep["columns"]:
            v = r["metrics"].get(c)
            text = "—" if v is None else f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4f}"
            cells.append(f"[bold]{text}[/]" if v is not None and v == best.get(c) and len(sweep["points"]) > 1 else text)
        trainable = r.get("trainable_params")
        table.add_row(*(r["overrides"][k] for k in keys), f"{trainable / 1e6:.3g} M" if trainable else "—", *cells)
    return table


def check_sweep_folder(output_dir: str | Path, names: list[str], overwrite: bool, inputs: list[str | Path] = ()) -> None:
    """Refuse a non-empty folder that is not this sweep's (a sweep's own folder is resumed);
    with `overwrite`, delete it first, unless it holds one of `inputs` (config, data, model)."""
    import shutil

    from honed.eval.crossval import refuse_folder_holding_inputs

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; choose a folder for the sweep")
    if overwrite and out.exists():
        refuse_folder_holding_inputs(out, list(inputs))
        shutil.rmtree(out)
        return
    if out.is_dir() and any(out.iterdir()):
        known = set(names) | {"sweep.json", "sweep.csv", "sweep.png"}
        strangers = [p.name for p in out.iterdir() if p.name not in known]
        if strangers:
            raise OutputExistsError(f"{out} holds {', '.join(sorted(strangers)[:3])} which are not points of this sweep; "
                                    "choose another folder or pass --overwrite")
