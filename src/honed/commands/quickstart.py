"""`honed quickstart [--model DIR_OR_HUB_ID]`: train, plot and probe a domain expert in minutes."""

from __future__ import annotations

BARS = "▁▂▃▄▅▆▇█"


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole path on built-in data and a tiny local model (CPU, a few minutes)")
    p.add_argument("--model", help="run the same path on this model folder or hub id instead of the tiny built-in model")
    p.add_argument("--output", default="honed-quickstart", help="output folder (default: ./honed-quickstart)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--epochs", type=float, help="override the number of epochs")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def sparkline(values: list[float], width: int = 60) -> str:
    """Loss curve as one line of block characters (bucketed to `width`)."""
    if not values:
        return ""
    step = max(1, len(values) // width)
    pts = [sum(values[i : i + step]) / len(values[i : i + step]) for i in range(0, len(values), step)]
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))] for v in pts)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from honed.quickstart import run_quickstart

    console = Console()
    console.rule("[bold]honed quickstart")
    console.print("Fine-tuning a LoRA adapter on the built-in clinical-laboratory consulting data "
                  f"({'tiny built-in model, CPU' if not args.model else args.model}).")
    res = run_quickstart(args.model, args.output, overwrite=args.overwrite, epochs=args.epochs, device=args.device)
    console.rule("loss")
    console.print(f"{res.losses[0]:.3f} {sparkline(res.losses)} {res.losses[-1]:.3f}  ({len(res.losses)} steps)")
    if res.val_losses:
        val = [loss for _, loss in res.val_losses]
        console.print(f"{val[0]:.3f} {sparkline(val)} {val[-1]:.3f}  (validation, {len(val)} evaluations)")
    console.rule("the tuned model answers")
    table = Table("question", "answer", "expected", "ok", show_lines=True)
    for probe in res.probes:
        table.add_row(probe.question, probe.answer, probe.expected, "[green]✓[/]" if probe.passed else "[red]✗[/]")
    console.print(table)
    console.rule("outputs")
    out = res.output_dir
    rows = [
        ("LoRA adapter (peft format)", out / "adapter_model.safetensors"),
        ("resolved config", out / "config.yaml"),
        ("versions + data fingerprint", out / "run_info.json"),
        ("metrics (JSONL)", out / "metrics.jsonl"),
        ("TensorBoard logs", out / "tensorboard"),
        ("loss curve (PNG)", res.plot),
        ("checkpoints", out / "checkpoints"),
    ]
    for label, path in rows:
        if path is not None:
            console.print(f"  {label:<28} {path}")
    console.print(f"\nChat with it:  honed chat --adapter {out}")
    if not all(p.passed for p in res.probes):
        console.print("[yellow]A probe did not give the expected answer: train longer (--epochs) or check the data.[/]")
    return 0
