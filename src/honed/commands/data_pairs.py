"""`honed data make-pairs DATA.jsonl -o pairs.jsonl [--model BASE]`: preference pairs for staying in the domain.

Refusal pairs (out-of-domain records: chosen = the refusal, rejected = the model's off-scope answer)
need `--model`; hard negatives (in-domain records: chosen = the answer, rejected = a wrong refusal)
are made from the file alone. The two kinds are balanced (`--balance`, `--max-ratio`) so that
neither "never refuse" nor "always refuse" wins most pairs; a table counts each kind as made and written.
"""

from __future__ import annotations


def register_make_pairs(verbs) -> None:
    p = verbs.add_parser("make-pairs", help="DPO pairs from in/out-of-domain data: refusals vs the model's off-scope answers, answers vs wrong refusals")
    p.add_argument("input", help="SFT data file whose records carry a split field (kind: in_domain / out_of_domain / near_domain)")
    p.add_argument("-o", "--output", required=True, help="pairs file to write (JSONL)")
    p.add_argument("--model", help="model whose answers to out-of-domain prompts become the rejected side (e.g. the base model)")
    p.add_argument("--adapter", help="LoRA adapter on top of --model")
    p.add_argument("--system-prompt-file", help="scope prompt the model answers under (as it will be deployed)")
    p.add_argument("--split-field", default="kind", help="record field holding in_domain/out_of_domain/near_domain (default: kind)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--kto", action="store_true", help="write unpaired KTO records (prompt/completion/label) instead of pairs")
    p.add_argument("--balance", choices=("upsample", "downsample", "none"), default="upsample",
                   help="even out the two kinds: upsample (default) repeats the smaller kind's pairs, downsample drops random "
                        "pairs of the larger kind, none keeps what was made (with a warning when one kind dominates)")
    p.add_argument("--max-ratio", type=float, default=1.0, help="pairs of the larger kind allowed per pair of the smaller one (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_make_pairs)


def run_make_pairs(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from honed.data.dataset import inject_system_prompt
    from honed.data.make_pairs import as_kto, make_pairs, write_pairs
    from honed.data.readers import read_records
    from honed.eval.metrics.refusal import RefusalDetector
    from honed.utils.fs import check_writable

    check_writable(args.output, args.overwrite)  # before any model loads
    answer = None
    if args.model:
        from honed.infer.generate import ChatModel, GenerationSettings

        bot = ChatModel.load(args.model, adapter=args.adapter, device=args.device)
        system = Path(args.system_prompt_file).read_text(encoding="utf-8").strip() if args.system_prompt_file else None
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)

        def answer(convs):
            return [r.text for r in bot.generate([inject_system_prompt(c, system) for c in convs], settings, batch_size=args.batch_size)]

    pairs, counts = make_pairs(read_records(args.input), split_field=args.split_field, answer=answer,
                               is_refusal=RefusalDetector().is_refusal, seed=args.seed, balance=args.balance, max_ratio=args.max_ratio)
    write_pairs(as_kto(pairs) if args.kto else pairs, args.output, overwrite=args.overwrite)
    console = Console()
    what = f"{2 * len(pairs)} KTO records from {len(pairs)} pairs" if args.kto else f"{len(pairs)} pairs"
    console.print(f"wrote {what} to {args.output} (balance: {counts['balance']})")
    console.print(kinds_table(counts))
    if counts["model_also_refused"]:
        console.print(f"{counts['model_also_refused']} out-of-domain prompts made no pair: the model already refused them")
    if counts["refusal_without_model"]:
        console.print(f"[yellow]{counts['refusal_without_model']} out-of-domain records made no pair: give --model to answer them[/]")
    for warning in counts["warnings"]:
        console.print(f"[yellow]warning: {warning}[/]")
    return 0


def kinds_table(counts: dict):
    """Pairs of each kind as made and as written (after balancing)."""
    from rich.table import Table

    table = Table("kind", "made", "written")
    for kind in ("refusal", "hard_negative"):
        table.add_row(kind.replace("_", "-"), str(counts["made"][kind]), str(counts["written"][kind]))
    return table
