"""`honed data inspect|augment|filter|stats|split|synth|add-context|add-refusals|make-pairs`: see and shape training data.

The verbs are thin: each parses flags and calls the library function that does the work
(honed.data.augment.run, honed.data.quality, honed.data.stats_report, honed.data.split,
honed.data.augment.synthetic, honed.data.refusals), so everything here is also available from Python.
"""

from __future__ import annotations

import argparse
import json

FILTER_EPILOG = """dedup keys of the --config YAML (flags override them):
  exact: true        drop exact duplicates (after normalising case, punctuation, spacing)
  near: true         drop near duplicates (MinHash LSH over character n-grams)
  threshold: 0.8     Jaccard similarity that counts as near
  text: prompt       compare the user turns (prompt), the answers (answer) or whole samples (all);
                     on prompts, distinct questions that share a refusal are not duplicates
  ngram: 5           character n-gram size
  num_perm: 128      MinHash permutations
rules: empty_answer (default on), min_chars, max_chars, min_answer_chars, languages, drop_regex, require_regex"""


def register(sub) -> None:
    data = sub.add_parser("data", help="see and shape training data")
    verbs = data.add_subparsers(dest="data_command", metavar="VERB")
    p = verbs.add_parser("inspect", help="show a rendered sample (trained spans marked) and token statistics")
    p.add_argument("config", help="training config (its model gives the tokenizer and template)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--sample", type=int, default=0, help="index of the sample to render")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run_inspect)
    register_shaping_verbs(verbs)
    register_add_context(verbs)
    from honed.commands.data_pairs import register_make_pairs

    register_make_pairs(verbs)
    register_add_refusals(verbs)
    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from honed.config import load_config
    from honed.data.inspect import inspect_data, trained_spans
    from honed.errors import ConfigError
    from honed.model.load import load_tokenizer, model_type_of

    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model)
    found = inspect_data(cfg, tokenizer, model_type_of(cfg.model.name_or_path, cfg.model)[0])
    if args.json:
        print(json.dumps(found.to_dict(), indent=2, ensure_ascii=False))
        return 0
    console = Console()
    if not 0 <= args.sample < len(found.samples):
        raise ConfigError(f"--sample {args.sample}: there are {len(found.samples)} samples")
    sample = found.samples[args.sample]
    rendered = Text()
    # Colour on a terminal; brackets when piped or redirected, where colour is lost.
    marks = ("", "") if console.is_terminal else ("⟦", "⟧")
    for ids, trained in trained_spans(sample.input_ids, sample.labels):
        piece = tokenizer.decode(ids, skip_special_tokens=False)
        rendered.append(f"{marks[0]}{piece}{marks[1]}" if trained else piece, style="bold green" if trained else "dim")
    console.rule(f"sample {args.sample} · {sample.source} · {len(sample.input_ids)} tokens, {sample.n_trainable} trained")
    console.print(rendered)
    legend = "green = trained (loss), dim = context only" if console.is_terminal else "⟦…⟧ = trained (loss), the rest is context only"
    console.print(Text(legend, style="italic"))
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


# --- augment, filter, stats, split, synth -------------------------------------------------------

def register_shaping_verbs(verbs) -> None:
    p = verbs.add_parser("augment", help="apply an augmentation recipe to data files once and write the result")
    p.add_argument("recipe", nargs="?", help="recipe YAML (input:/output: inside, or use the flags)")
    p.add_argument("--input", nargs="+", help="data file(s); overrides the recipe's input:")
    p.add_argument("--output", "-o", help="output JSONL; overrides the recipe's output:")
    p.add_argument("--seed", type=int, help="overrides the recipe's seed")
    p.add_argument("--epoch", type=int, default=0, help="which epoch's draws to write (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--dry-run", action="store_true", help="show the generator prompts; call nothing, write nothing")
    p.add_argument("--list", action="store_true", help="list the transforms: what each does and its parameters (--json too)")
    p.add_argument("--json", action="store_true", help="print the per-step statistics as JSON")
    p.set_defaults(func=run_augment)

    p = verbs.add_parser("filter", help="remove duplicates, near duplicates, rule breakers, eval overlap, low judge scores",
                         epilog=FILTER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="data file(s)")
    p.add_argument("--output", "-o", required=True, help="JSONL of the kept samples")
    p.add_argument("--report", help="JSON report of every removal (default: OUTPUT.report.json)")
    p.add_argument("--config", help="filter YAML (dedup:, rules:, overlap:, judge:); flags override it")
    p.add_argument("--threshold", type=float, help="near-duplicate Jaccard threshold (default 0.8)")
    p.add_argument("--no-near", action="store_true", help="exact duplicates only")
    p.add_argument("--no-dedup", action="store_true", help="no duplicate removal at all")
    p.add_argument("--dedup-text", choices=("prompt", "answer", "all"),
                   help="what duplicates are compared on (default prompt: the user turns, so questions sharing a refusal stay)")
    p.add_argument("--min-chars", type=int)
    p.add_argument("--max-chars", type=int)
    p.add_argument("--min-answer-chars", type=int)
    p.add_argument("--languages", help="keep only these, e.g. en,zh")
    p.add_argument("--drop-regex", action="append", default=[], help="drop samples matching (repeatable)")
    p.add_argument("--require-regex", action="append", default=[], help="keep only samples matching (repeatable)")
    p.add_argument("--eval", action="append", default=[], help="evaluation file: drop training samples overlapping it")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge model (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--judge-model", help="model name at the judge URL")
    p.add_argument("--judge-threshold", type=float, help="keep samples scoring at least this (0-1, default 0.6)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_filter)

    p = verbs.add_parser("stats", help="HTML page: lengths, label balance, duplication, original vs augmented")
    p.add_argument("inputs", nargs="+", help="data file(s)")
    p.add_argument("--output", "-o", default="data_stats.html")
    p.add_argument("--augmented", nargs="+", help="augmented file(s) written by `honed data augment`")
    p.add_argument("--recipe", help="or: a recipe applied in memory to show its effect")
    p.add_argument("--model", help="model folder whose tokenizer gives token lengths")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_stats)

    p = verbs.add_parser("split", help="seeded train/val/test split, stratified by label when present")
    p.add_argument("inputs", nargs="+", help="data file(s)")
    p.add_argument("--out-dir", "-o", required=True, help="folder for NAME.jsonl per split")
    p.add_argument("--ratios", default="0.8,0.1,0.1")
    p.add_argument("--names", help="split names (default train,val,test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify", default="auto", help="auto (label when every sample has one), none, or a meta key")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_split)

    p = verbs.add_parser("synth", help="new samples in the shape of given examples, from a generator model")
    p.add_argument("examples", nargs="+", help="file(s) of example samples")
    p.add_argument("--output", "-o", help="JSONL of the generated samples")
    p.add_argument("--n", type=int, default=10, help="generator calls (one sample each)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name at the endpoint")
    p.add_argument("--local-model", help="or: a local model/adapter folder run through honed")
    p.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for each reply (default 60)")
    p.add_argument("--retries", type=int, default=2,
                   help="retries on connection errors, 408/409/429 and 5xx, with back-off (default 2)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest reply, in tokens (default 512)")
    p.add_argument("--template", help="prompt template file ({examples}, {keys}, {task}); default: the shipped one")
    p.add_argument("--shots", type=int, default=3, help="examples shown per call")
    p.add_argument("--task", default="", help="one line describing the task, put into the prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the prompts; call nothing, write nothing")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_synth)


def _console():
    from rich.console import Console

    return Console()


def _print_prompts(console, prompts) -> None:
    for i, (name, messages) in enumerate(prompts):
        console.rule(f"prompt {i + 1} ({name})")
        for m in messages:
            console.print(f"[bold]{m.role}[/]: {m.content}", markup=True, highlight=False)


def run_augment(args) -> int:
    from rich.table import Table

    from honed.data.augment import describe
    from honed.data.augment.run import augment_files
    from honed.errors import ConfigError

    console = _console()
    if args.list:
        found = describe()
        if args.json:
            print(json.dumps(found, indent=2, ensure_ascii=False))
            return 0
        table = Table("transform", "family", "what it does", "params (default)", show_lines=True)
        for t in found:
            params = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in t["params"].items()) or "—"
            table.add_row(t["name"], t["family"] + (" (labels)" if t["needs_labels"] else ""), t["description"], params)
        console.print(table)
        return 0
    if not args.recipe:
        raise ConfigError("honed data augment: give a RECIPE.yaml (or --list to see the transforms)")
    run = augment_files(args.recipe, args.input, args.output, seed=args.seed, epoch=args.epoch,
                        overwrite=args.overwrite, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(run.stats.to_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(title=f"{run.stats.samples_in} samples in → {run.stats.samples_out} out")
        table.add_column("step", no_wrap=True, min_width=max(len(s.name) for s in run.stats.steps))
        for head in ("applied", "unchanged", "not drawn", "filtered", "unfit", "generated"):
            table.add_column(head, justify="right")
        for s in run.stats.steps:
            table.add_row(s.name, *map(str, (s.applied, s.unchanged, s.not_drawn, s.filtered, s.unfit_skipped, s.generated)))
        console.print(table)
    if args.dry_run:
        _print_prompts(console, run.prompts)
        console.print(f"dry run: {len(run.prompts)} generator prompts built, nothing called, nothing written")
    else:
        console.print(f"wrote {len(run.samples)} samples to {run.output}")
    return 0


def run_filter(args) -> int:

    from honed.config import read_yaml_config
    from honed.data.augment.io import read_conversations, write_conversations
    from honed.data.quality import FilterConfig, filter_conversations
    from honed.utils.fs import check_writable, write_text_atomic

    raw = read_yaml_config(args.config, kind="filter config") if args.config else {}
    dedup, rules = raw.setdefault("dedup", {}), raw.setdefault("rules", {})
    if args.threshold is not None:
        dedup["threshold"] = args.threshold
    if args.no_near or args.no_dedup:
        dedup["near"] = False
    if args.no_dedup:
        dedup["exact"] = False
    if args.dedup_text:
        dedup["text"] = args.dedup_text
    for key in ("min_chars", "max_chars", "min_answer_chars"):
        if getattr(args, key) is not None:
            rules[key] = getattr(args, key)
    if args.languages:
        rules["languages"] = [x.strip() for x in args.languages.split(",") if x.strip()]
    rules["drop_regex"] = rules.get("drop_regex", []) + args.drop_regex
    rules["require_regex"] = rules.get("require_regex", []) + args.require_regex
    if args.eval:
        raw["overlap"] = {**(raw.get("overlap") or {}), "eval": (raw.get("overlap") or {}).get("eval", []) + args.eval}
    if args.judge_url:
        raw["judge"] = {**(raw.get("judge") or {}), "generator": {"kind": "openai", "base_url": args.judge_url,
                        "model": args.judge_model or "default", "api_key_env": args.judge_key_env, "temperature": 0.0}}
    if args.judge_threshold is not None and raw.get("judge"):
        raw["judge"]["threshold"] = args.judge_threshold
    cfg = FilterConfig.parse(raw, args.config or "filter")
    report_path = args.report or f"{args.output}.report.json"
    check_writable(args.output, args.overwrite)
    check_writable(report_path, args.overwrite)
    convs = read_conversations(args.inputs, allow_empty_answers=True)  # removed by the empty_answer rule
    evals = read_conversations(cfg.overlap.eval) if cfg.overlap and cfg.overlap.eval else None
    result = filter_conversations(convs, cfg, evals)
    write_conversations(args.output, result.kept, overwrite=args.overwrite)
    write_text_atomic(report_path, json.dumps(result.report(cfg), indent=2, ensure_ascii=False))
    console = _console()
    console.print(f"{result.n_in} samples in, {len(result.kept)} kept, {len(result.removals)} removed")
    for reason, n in sorted(result.counts().items()):
        console.print(f"  {reason}: {n}")
    for r in result.removals[:5]:
        also = f" (duplicates {r.duplicate_of}, similarity {r.similarity})" if r.duplicate_of else ""
        console.print(f"  e.g. {r.source}: {r.reason}: {r.detail}{also}", highlight=False)
    console.print(f"kept samples: {args.output}; every removal: {report_path}")
    return 0


def run_stats(args) -> int:
    from honed.data.augment.io import read_conversations
    from honed.data.stats_report import compute_stats, render_html
    from honed.utils.fs import check_writable, write_text_atomic

    check_writable(args.output, args.overwrite)
    original = read_conversations(args.inputs)
    augmented = None
    if args.augmented:
        augmented = read_conversations(args.augmented)
    elif args.recipe:
        from honed.data.augment.run import augment_files

        augmented = augment_files(args.recipe, args.inputs, dry_run=True).samples  # in memory, nothing written
    tokenizer = None
    if args.model:
        from honed.config import ModelConfig
        from honed.model.load import load_tokenizer

        tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    write_text_atomic(args.output, render_html(original, augmented, tokenizer=tokenizer, title=f"honed data stats: {', '.join(args.inputs)}"))
    if args.json:
        stats = compute_stats(original, tokenizer)
        print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}, indent=2, ensure_ascii=False))
    _console().print(f"wrote {args.output}")
    return 0


def run_split(args) -> int:
    from pathlib import Path

    from honed.data.augment.io import read_conversations, write_conversations
    from honed.utils.fs import check_writable
    from honed.data.split import parse_ratios, split_conversations

    ratios = parse_ratios(args.ratios, args.names)
    targets = {name: Path(args.out_dir) / f"{name}.jsonl" for name in ratios}
    for path in targets.values():
        check_writable(path, args.overwrite)
    stratify = None if args.stratify == "none" else args.stratify
    parts = split_conversations(read_conversations(args.inputs), ratios, seed=args.seed, stratify_by=stratify)
    console = _console()
    for name, convs in parts.items():
        write_conversations(targets[name], convs, overwrite=args.overwrite)
        labels = {}
        for c in convs:
            labels[str(c.meta.get("label"))] = labels.get(str(c.meta.get("label")), 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(labels.items())) if any(k != "None" for k in labels) else ""
        console.print(f"{name}: {len(convs)} samples → {targets[name]}" + (f" ({shown})" if shown else ""))
    return 0


def run_synth(args) -> int:
    from honed.data.generators import make_generator
    from honed.data.augment.io import read_conversations, write_conversations
    from honed.utils.fs import check_writable
    from honed.data.augment.synthetic import synthesize
    from honed.errors import ConfigError

    if args.dry_run:
        spec = {"kind": "dry_run"}
    elif args.endpoint:
        spec = {"kind": "openai", "base_url": args.endpoint, "model": args.model or "default",
                "api_key_env": args.key_env, "temperature": args.temperature, "timeout": args.timeout,
                "retries": args.retries, "max_tokens": args.max_tokens}
    elif args.local_model:
        spec = {"kind": "local", "path": args.local_model, "temperature": args.temperature, "max_tokens": args.max_tokens}
    else:
        raise ConfigError("honed data synth: give --endpoint URL (with --model), --local-model DIR, or --dry-run")
    if not args.dry_run:
        if not args.output:
            raise ConfigError("honed data synth: give --output FILE (or --dry-run)")
        check_writable(args.output, args.overwrite)
    result = synthesize(read_conversations(args.examples), make_generator(spec), args.n, seed=args.seed,
                        template=args.template, shots=args.shots, task=args.task)
    console = _console()
    if args.dry_run:
        _print_prompts(console, [("synthetic", p) for p in result.prompts])
        console.print(f"dry run: {len(result.prompts)} prompts built, nothing called, nothing written")
        return 0
    write_conversations(args.output, result.samples, overwrite=args.overwrite)
    console.print(f"{len(result.samples)} of {args.n} generations kept → {args.output}")
    for i, why in result.rejected[:10]:
        console.print(f"  rejected call {i}: {why}", highlight=False)
    return 0


# --- add-context (retrieval-augmented samples from a knowledge base) --------------------------------

def register_add_context(verbs) -> None:
    p = verbs.add_parser("add-context", help="RAG training samples: knowledge-base passages + distractors, some unanswerable")
    p.add_argument("--kb", required=True, help="knowledge base folder (built with `honed kb add`)")
    p.add_argument("--in", dest="input", required=True, help="Q&A data file (OpenAI messages, ShareGPT, Alpaca)")
    p.add_argument("--out", dest="output", required=True, help="JSONL of OpenAI-messages samples to write")
    p.add_argument("--distractors", type=int, default=3, help="passages per sample that do not hold the answer (default 3)")
    p.add_argument("--support", type=int, default=1, help="supporting passages per sample (default 1)")
    p.add_argument("--unanswerable-ratio", type=float, default=0.2, help="share of samples whose support is removed (default 0.2)")
    p.add_argument("--retrieve-by", choices=["question+answer", "question"], default="question+answer",
                   help="what finds the supporting passage (default question+answer)")
    p.add_argument("--no-cite", action="store_true", help="do not append [n] citations to the answers")
    p.add_argument("--min-support", type=float, default=0.3, help="share of an answer's words its best passage must hold (default 0.3)")
    p.add_argument("--unsupported", choices=["keep", "drop", "unanswerable"], default="keep",
                   help="answers below --min-support: keep them, drop them, or make them unanswerable samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_add_context)


def run_add_context(args) -> int:
    from honed.guard.knowledge.samples import add_context
    from honed.guard.knowledge import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    report = add_context(kb, args.input, args.output, distractors=args.distractors, unanswerable_ratio=args.unanswerable_ratio,
                         support=args.support, retrieve_by=args.retrieve_by, cite_sources=not args.no_cite, seed=args.seed,
                         overwrite=args.overwrite, min_support=args.min_support, unsupported=args.unsupported)
    console = _console()
    counts = report.to_dict()
    console.print(f"wrote {counts['samples']} samples to {args.output}: {counts['answerable']} answerable (cited), "
                  f"{counts['unanswerable']} unanswerable, {counts['out_of_domain']} out-of-domain refusals")
    if report.weak_support:
        console.print(f"[yellow]{len(report.weak_support)} answers share few words with their best passage[/] "
                      f"(the KB may not cover them; --unsupported {args.unsupported}; first: {report.weak_support[0]})")
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} records skipped[/] (first: {report.skipped[0][0]}: {report.skipped[0][1]})")
    return 0


# --- add-refusals -------------------------------------------------------------------------------

def register_add_refusals(verbs) -> None:
    p = verbs.add_parser("add-refusals", help="mix refusals, near-domain hard negatives and clarifying replies into a training set")
    p.add_argument("--in", dest="input", required=True, help="in-domain training data (any format honed reads)")
    p.add_argument("--out", required=True, help="output JSONL (every record tagged with `kind`)")
    p.add_argument("--ratio", type=float, default=0.15, help="share of refusal samples in the output (default 0.15)")
    p.add_argument("--ood-pool", help="your out-of-domain questions: a text file (one per line) or a data file; used before the built-in pool")
    p.add_argument("--no-builtin-pool", action="store_true", help="use only --ood-pool questions")
    p.add_argument("--exclude-topic", action="append", default=[], metavar="TOPIC",
                   help="leave this built-in topic out of the pool (repeatable; it may be your domain)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--refusals", help="refusal phrasings, one per line (language detected per line)")
    group.add_argument("--refusal", action="append", metavar="TEXT", help="a refusal phrasing (repeatable)")
    p.add_argument("--language", default="auto", choices=["auto", "en", "zh"],
                   help="auto: refusals in the in-domain data's languages, in its proportions")
    p.add_argument("--hard-negatives", help="near-domain questions with their normal answers (data file)")
    p.add_argument("--ambiguous", help="ambiguous questions with a clarifying reply (data file)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt", help="scope prompt put first in every record")
    prompt.add_argument("--system-prompt-file", help="read the scope prompt from this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--list-topics", action="store_true", help="list the built-in pool's topics and exit")
    p.set_defaults(func=run_add_refusals)


def run_add_refusals(args) -> int:
    from pathlib import Path

    from rich.table import Table

    from honed.data.refusals import LANGUAGES, add_refusals, builtin_topics, check_topics
    from honed.errors import ConfigError

    console = _console()
    if args.list_topics:
        console.print(", ".join(builtin_topics()))
        return 0
    check_topics(args.exclude_topic)
    system_prompt = args.system_prompt
    if args.system_prompt_file:
        if not Path(args.system_prompt_file).is_file():
            raise ConfigError(f"--system-prompt-file: file not found: {args.system_prompt_file}")
        system_prompt = Path(args.system_prompt_file).read_text(encoding="utf-8").strip()
    mix = add_refusals(args.input, args.out, overwrite=args.overwrite, ood_pool_path=args.ood_pool,
                       refusals_path=args.refusals, refusal_texts=args.refusal, hard_negatives_path=args.hard_negatives,
                       ambiguous_path=args.ambiguous, ratio=args.ratio, use_builtin_pool=not args.no_builtin_pool,
                       exclude_topics=set(args.exclude_topic), language=args.language, system_prompt=system_prompt,
                       seed=args.seed)
    table = Table(title=f"{len(mix.conversations)} samples → {args.out}")
    table.add_column("kind")
    for lang in LANGUAGES:
        table.add_column(lang, justify="right")
    table.add_column("total", justify="right")
    table.add_column("share", justify="right")
    for kind, per_lang, total in mix.table():
        table.add_row(kind, *(str(per_lang[lang]) for lang in LANGUAGES), str(total),
                      f"{total / max(len(mix.conversations), 1):.1%}")
    console.print(table)
    for where, why in mix.skipped[:10]:
        console.print(f"  skipped {where}: {why}", highlight=False)
    if mix.skipped:
        console.print(f"{len(mix.skipped)} items skipped (duplicates of questions already in the data)")
    for text in _undetected_refusals(args):
        console.print(f"[yellow]warning:[/] `honed eval` would not recognise this refusal: {text!r}; add one of its "
                      "phrases to the eval config's refusal.phrases", highlight=False)
    for warning in mix.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return 0


def _undetected_refusals(args) -> list[str]:
    # Refusals the default detector misses would count as answers in `honed eval`: say so now.
    from honed.data.refusals import read_lines
    from honed.eval.metrics.refusal import default_detector

    texts = list(args.refusal or []) + (read_lines(args.refusals, "--refusals") if args.refusals else [])
    return [t for t in texts if not default_detector().is_refusal(t)]
