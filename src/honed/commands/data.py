"""`honed data inspect CONFIG.yaml`: a rendered sample with trained spans marked, and length statistics."""

from __future__ import annotations

import json


def register(sub) -> None:
    data = sub.add_parser("data", help="see and shape training data")
    verbs = data.add_subparsers(dest="data_command", metavar="VERB")
    p = verbs.add_parser("inspect", help="show a rendered sample (trained spans marked) and token statistics")
    p.add_argument("config", help="training config (its model gives the tokenizer and template)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--sample", type=int, default=0, help="index of the sample to render")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run_inspect)
    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from honed.config import load_config
    from honed.data.inspect import inspect_data, trained_spans
    from honed.errors import ConfigError
    from honed.model.load import load_tokenizer

    cfg = load_config(args.config, args.overrides)
    found = inspect_data(cfg)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2, ensure_ascii=False))
        return 0
    console = Console()
    if not 0 <= args.sample < len(found.samples):
        raise ConfigError(f"--sample {args.sample}: there are {len(found.samples)} samples")
    tokenizer = load_tokenizer(cfg.model)
    sample = found.samples[args.sample]
    rendered = Text()
    for ids, trained in trained_spans(sample.input_ids, sample.labels):
        piece = tokenizer.decode(ids, skip_special_tokens=False)
        rendered.append(piece, style="bold green" if trained else "dim")
    console.rule(f"sample {args.sample} · {sample.source} · {len(sample.input_ids)} tokens, {sample.n_trainable} trained")
    console.print(rendered)
    console.print(Text("green = trained (loss), dim = context only", style="italic"))
    console.rule("data")
    table = Table(show_header=True)
    table.add_column("file")
    table.add_column("format")
    for path, fmt in found.formats.items():
        table.add_row(path, fmt)
    console.print(table)
    pct = found.percentiles()
    console.print(f"{found.n_train} train, {found.n_validation} validation samples; tokens per sample " + ", ".join(f"{k} {v}" for k, v in pct.items()))
    console.print(f"{found.n_over_max} of {len(found.lengths)} samples exceed max_seq_length={found.max_seq_length} and would be truncated")
    if found.skipped:
        console.print(f"[yellow]{len(found.skipped)} records skipped[/] (first: {found.skipped[0][0]}: {found.skipped[0][1]})")
    hist = Table("tokens", "samples", "", title="length distribution")
    peak = max(c for _, _, c in found.histogram()) or 1
    for lo, hi, count in found.histogram():
        hist.add_row(f"{lo}–{hi}", str(count), "█" * round(30 * count / peak))
    console.print(hist)
    return 0
