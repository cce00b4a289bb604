"""`honed sweep CONFIG.yaml --grid key=v1,v2 … --data EVAL.jsonl`: train and evaluate one run per
grid point (resumable), then one comparison table (sweep.json, sweep.csv, printed) and plot (sweep.png)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter / model-size sweep: train + eval per grid point, one comparison table and plot",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  honed sweep lora.yaml --grid lora.r=8,16,32 --grid training.learning_rate=1e-4,2e-4 --data eval.jsonl\n"
                              "  honed sweep lora.yaml --grid method=lora,full --data eval.jsonl --metric loss\n"
                              "  honed sweep lora.yaml --grid model.name_or_path=/m/Qwen2.5-0.5B,/m/Qwen2.5-1.5B --data eval.jsonl")
    p.add_argument("config", help="training config (YAML) every point starts from")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every point")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a key and its values (repeatable: the points are every combination)")
    p.add_argument("--data", help="evaluation file each point's run is evaluated on")
    p.add_argument("--eval-config", help="eval config (YAML) whose settings are used for every point (its models are replaced)")
    p.add_argument("--output", default="sweep", help="sweep folder (default: sweep); run again to resume")
    p.add_argument("--metric", default="rougeL", help="metric plotted per point (a report summary key: rougeL, loss, accuracy, mae, …)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--overwrite", action="store_true", help="delete the sweep folder first (default: resume it)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def eval_settings(args) -> dict:
    """The partial eval config used for every point: --eval-config, then the flags over it."""
    from honed.config import deep_merge, read_yaml_config

    raw = read_yaml_config(args.eval_config, kind="eval config") if args.eval_config else {}
    if args.eval_config and raw.get("data", {}).get("path"):
        from pathlib import Path

        base = Path(args.eval_config).parent
        for key in ("path", "system_prompt_file"):
            value = raw["data"].get(key)
            if value and not Path(value).is_absolute() and (base / value).exists():
                raw["data"][key] = str(base / value)
    flags: dict = {}
    if args.data:
        flags["data"] = {"path": args.data}
    generation = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}.items() if v is not None}
    if generation:
        flags["generation"] = generation
    return deep_merge(raw, flags)


def run(args) -> int:
    from rich.console import Console

    from honed.eval.sweep import check_sweep_folder, grid_points, parse_grid, point_name, run_sweep, sweep_table

    grid = parse_grid(args.grid)
    eval_raw = eval_settings(args)
    inputs = [args.config, args.eval_config, (eval_raw.get("data") or {}).get("path")]
    check_sweep_folder(args.output, [point_name(p) for p in grid_points(grid)], args.overwrite, [i for i in inputs if i])
    result = run_sweep(args.config, grid, args.output, eval_raw=eval_raw, overrides=args.overrides,
                       metric=args.metric, show_progress=not args.no_progress)
    Console().print(sweep_table(result.report))
    skipped = sum(r["skipped"] for r in result.report["points"])
    Console(stderr=True).print(f"[green]done[/]: {len(result.report['points'])} points ({skipped} skipped (done)) → "
                               f"{result.output_dir}/sweep.json · sweep.csv · sweep.png")
    return 0
