"""`honed merge --base B --tuned T [--alpha A] --out DIR`: interpolate a fine-tune with its base;
`--sweep 0,0.25,0.5,0.75,1 --eval CONFIG` evaluates each alpha and recommends one.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("merge", help="base <-> tuned weight interpolation (alpha=1: plain LoRA merge); --sweep to choose alpha",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  honed merge --base models/qwen --tuned runs/lora --out merged            # alpha 1: the plain merge\n"
                              "  honed merge --base models/qwen --tuned runs/lora --alpha 0.6 --out merged-0.6\n"
                              "  honed merge --base models/qwen --tuned runs/lora --sweep 0,0.25,0.5,0.75,1 --eval eval.yaml --out sweep")
    p.add_argument("--base", required=True, help="the base model folder (or hub id) the tuned model came from")
    p.add_argument("--tuned", required=True, help="a full fine-tuned model folder, or a LoRA adapter folder (merged first)")
    p.add_argument("--out", required=True, help="output folder (a model; with --sweep, one model per alpha + sweep.json/png)")
    p.add_argument("--alpha", type=float, default=1.0, help="W = W_base + alpha*(W_tuned - W_base); 1 = tuned, 0 = base (default 1)")
    p.add_argument("--sweep", metavar="A,B,...", help="comma-separated alphas to write and evaluate (needs --eval)")
    p.add_argument("--eval", metavar="CONFIG", help="honed eval config used at every alpha (its models are replaced)")
    p.add_argument("--eval-set", action="append", default=[], metavar="key=value", help="override a key of the eval config (repeatable)")
    p.add_argument("--refusal-target", type=float, default=0.9, help="recommendation rule: least out-of-domain refusal rate (default 0.9)")
    p.add_argument("--false-refusal-limit", type=float, default=0.05, help="recommendation rule: most false refusals (default 0.05)")
    p.add_argument("--quality-share", type=float, default=0.9, help="recommendation rule: least share of the best in-domain ROUGE-L (default 0.9)")
    p.add_argument("--no-general", action="store_true", help="skip the general-ability questions in the sweep")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code (only if you trust it)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def run(args) -> int:
    from rich.console import Console

    from honed.errors import ConfigError

    console = Console()
    if args.sweep is None:
        if args.eval:
            raise ConfigError("--eval is used with --sweep A,B,...; to evaluate one merged model run `honed eval --model DIR`")
        from honed.export.interpolate import interpolate

        out = interpolate(args.base, args.tuned, args.alpha, args.out, overwrite=args.overwrite,
                          trust_remote_code=args.trust_remote_code)
        console.print(f"alpha={args.alpha:g}: W_base + {args.alpha:g}·(W_tuned − W_base) → {out}")
        return 0
    if not args.eval:
        raise ConfigError("--sweep needs --eval CONFIG: the honed eval config that measures each alpha")
    if args.trust_remote_code:
        raise ConfigError("--trust-remote-code is not supported with --sweep; interpolate single alphas instead")
    from rich.table import Table

    from honed.export.alpha_sweep import parse_alphas, run_sweep

    result = run_sweep(args.base, args.tuned, parse_alphas(args.sweep), args.eval, args.out, overrides=args.eval_set,
                       overwrite=args.overwrite, general=not args.no_general, refusal_target=args.refusal_target,
                       false_refusal_limit=args.false_refusal_limit, quality_share=args.quality_share,
                       show_progress=not args.no_progress)
    table = Table("alpha", "in-domain ROUGE-L", "OOD refused", "false refusals", "general accuracy", title="base ↔ tuned sweep")
    for p in result.points:
        mark = " ←" if p.alpha == result.recommendation.alpha else ""
        table.add_row(f"{p.alpha:g}{mark}", "—" if p.in_domain_quality is None else f"{p.in_domain_quality:.3f}",
                      _pct(p.ood_refusal_rate), _pct(p.false_refusal_rate), _pct(p.general_accuracy))
    console.print(table)
    rec = result.recommendation
    console.print(f"rule: {rec.rule}", highlight=False)
    console.print(f"[bold]recommended: alpha={rec.alpha:g}[/] ({rec.reason}) → {result.out_dir / f'alpha-{rec.alpha:g}'}"
                  if rec.alpha is not None else f"[yellow]no recommendation:[/] {rec.reason}", highlight=False)
    console.print(f"table: {result.table}  plot: {result.plot}  eval report: {result.eval_dir}")
    return 0
