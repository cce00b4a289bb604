"""`honed train CONFIG.yaml [key=value ...]`"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (SFT, or DPO/ORPO/SimPO/KTO with objective:; LoRA, QLoRA or full) from a YAML config")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. training.learning_rate=1e-4")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from honed.config import load_config
    from honed.train.sft import TrainingInterrupted, train

    cfg = load_config(args.config, args.overrides)
    console = Console(stderr=True)
    if cfg.stages:
        from honed.train.stages import run_stages

        try:
            results = run_stages(cfg, show_progress=not args.no_progress)
        except TrainingInterrupted as stop:
            console.print(f"[yellow]{stop}[/] (finished stages are kept; run the same command again to go on)")
            return 130
        for stage, res in zip(cfg.stages, results):
            console.print(f"stage {stage.name}: " + ("already finished" if res is None else f"{res.steps} steps → {res.output_dir}"))
        return 0
    try:
        result = train(cfg, show_progress=not args.no_progress)
    except TrainingInterrupted as stop:
        console.print(f"[yellow]{stop}[/]")
        return 130
    console.print(f"[green]done[/]: {result.steps} steps, final train loss {result.losses[-1]:.4f}" if result.losses else "[green]done[/]")
    if result.best_step is not None:
        console.print(f"best validation loss at step {result.best_step}: {result.output_dir / 'best'}")
    if result.stopped_early:
        console.print("stopped early: validation loss stopped improving")
    console.print(f"outputs: {result.output_dir} (weights, config.yaml, run_info.json, metrics.jsonl, loss_curve.png, checkpoints/)")
    return 0
