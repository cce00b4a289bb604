"""`honed eval CONFIG.yaml [key=value ...]` or `honed eval --model DIR [--adapter DIR] --data FILE
[--baseline MODEL_OR_RUN ...]`: evaluate a fine-tune against its base and write a report.
`honed eval --cv K TRAIN.yaml [key=value ...]`: k-fold cross-validation of a training config.
`honed eval ... --nproc-per-node N` (or `torchrun --nproc-per-node N -m honed eval ...`): the same
evaluation sharded across N processes (one per GPU); the report equals a single process's.

Flags given with a config file override its keys (as `key=value` does).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure a fine-tune against its base: metrics, report.json/.html, predictions",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  honed eval eval.yaml generation.batch_size=16\n"
                              "  honed eval --model runs/lora --data eval.jsonl --baseline base\n"
                              "  honed eval --model runs/lora --data eval.jsonl --baseline base --checkpoints all\n"
                              "  honed eval --cv 5 train.yaml training.epochs=2 --output cv-report\n"
                              "  honed eval eval.yaml --nproc-per-node 4")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help="eval config file and/or key=value overrides")
    p.add_argument("--model", help="model folder/hub id, adapter folder, or `honed train` run folder to evaluate")
    p.add_argument("--adapter", help="LoRA adapter on top of --model")
    p.add_argument("--baseline", action="append", default=None, metavar="MODEL_OR_RUN",
                   help="compare against this model (repeatable); `base` = the adapter's base model")
    p.add_argument("--data", help="evaluation file (JSONL/JSON/CSV/Parquet; prompt + reference per record)")
    p.add_argument("--preference", metavar="PAIRS", help="preference pairs file: report preference accuracy and margin per model")
    p.add_argument("--output", help="report folder (default: eval-report)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty report folder")
    p.add_argument("--system-prompt", help="scope prompt put first in every conversation")
    p.add_argument("--system-prompt-file", help="read the scope prompt from this file")
    p.add_argument("--labels", help="comma-separated label set: turns on classification metrics")
    p.add_argument("--refusal-phrase", action="append", metavar="TEXT", help="text that marks a refusal (repeatable)")
    p.add_argument("--max-samples", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--template", help="chat template name (default: the tokenizer's own)")
    p.add_argument("--checkpoints", choices=["none", "all"], help="all: also evaluate every checkpoint of the run")
    p.add_argument("--stability", type=int, metavar="N", help="sample N answers per prompt to measure stability")
    p.add_argument("--general", action="store_true", help="also run the built-in general-ability set (forgetting check)")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL: turns on LLM-as-judge scoring")
    p.add_argument("--judge-model", help="model name to send to the judge endpoint")
    p.add_argument("--language-match", action="store_true", help="share of answers in their reference's language (lingua)")
    p.add_argument("--cv", type=int, metavar="K", help="k-fold cross-validation: CONFIG is a TRAINING config; trains and "
                   "evaluates K folds of its training data and reports mean ± std (output default: cv-report)")
    p.add_argument("--guard", metavar="DIR", help="gate folder (honed guard fit) in front of the models: a question it refuses counts as refused")
    p.add_argument("--refusal-calibration", metavar="FILE", help="refusal calibration (honed guard fit-refusal) for the evaluated model: "
                   "records each sample's refusal_probability, the domain AUROC is P(refuse)'s")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc-per-node", type=int, metavar="N", help="shard the evaluation across N processes, one per GPU "
                   "(starts torchrun's launcher; the same as `torchrun --nproc-per-node N -m honed eval ...`)")
    p.set_defaults(func=run)


def _flags_as_dict(args) -> dict:
    """The command-line flags as a partial eval config (only the flags that were given)."""
    raw: dict = {}
    if args.model:
        raw["models"] = [{"path": args.model, "adapter": args.adapter}]
    elif args.adapter:
        raw["models"] = [{"path": args.adapter}]
    if args.baseline:
        raw.setdefault("models", [])
        raw["baseline_models"] = [{"path": b} for b in args.baseline]
    data = {k: v for k, v in {"path": args.data, "system_prompt": args.system_prompt,
                              "system_prompt_file": args.system_prompt_file, "max_samples": args.max_samples}.items() if v is not None}
    if data:
        raw["data"] = data
    if args.preference:
        raw["preference"] = {"path": args.preference}
    generation = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}.items() if v is not None}
    if generation:
        raw["generation"] = generation
    for key, value in (("output_dir", args.output), ("device", args.device), ("dtype", args.dtype), ("template", args.template)):
        if value is not None:
            raw[key] = value
    if args.overwrite:
        raw["overwrite"] = True
    if args.labels:
        raw["labels"] = [label.strip() for label in args.labels.split(",") if label.strip()]
    if args.refusal_phrase:
        raw["refusal"] = {"phrases": args.refusal_phrase}
    if args.checkpoints:
        raw["fitting"] = {"checkpoints": args.checkpoints}
    if args.stability is not None:
        raw["stability"] = {"samples": args.stability}
    if args.general:
        raw["general"] = {"enabled": True}
    if getattr(args, "language_match", False):
        raw["language_match"] = True
    if args.judge_url or args.judge_model:
        raw["judge"] = {"enabled": True, **({"base_url": args.judge_url} if args.judge_url else {}),
                        **({"model": args.judge_model} if args.judge_model else {})}
    return raw


def build_config(args):
    """EvalConfig from an optional config file, `key=value` overrides, then flags."""
    from pathlib import Path

    import yaml

    from honed.config import deep_merge, parse_overrides
    from honed.errors import ConfigError
    from honed.eval.config import _resolve, eval_config_from_dict, load_eval_config

    files = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(files) > 1:
        raise ConfigError(f"give one eval config file, got {files}")
    flags = _flags_as_dict(args)
    extra_baselines = flags.pop("baseline_models", [])
    if files:
        cfg = load_eval_config(files[0], overrides)
        raw = cfg.model_dump(mode="json", exclude_unset=True)
        if flags.get("models") == []:
            flags.pop("models")
        raw = deep_merge(raw, flags)
        where, base = files[0], Path(files[0]).parent
    else:
        if not args.model and not args.adapter:
            raise ConfigError("give an eval config file, or --model DIR (and --data FILE); see `honed eval --help`")
        if not args.data:
            raise ConfigError("--data FILE is required without a config file (prompt + reference per record)")
        raw = deep_merge(flags, parse_overrides(overrides))
        where, base = "command line", Path(".")
    raw["models"] = list(raw.get("models", [])) + extra_baselines
    if extra_baselines and not raw.get("baseline"):
        # Deltas go against the first --baseline, whatever other models the config lists.
        from honed.eval.config import ModelEntry, model_names

        names = model_names([ModelEntry(**m) for m in raw["models"]])
        raw["baseline"] = names[len(raw["models"]) - len(extra_baselines)]
    yaml.safe_dump(raw)  # fail early on values that cannot be written back into report.json
    return _resolve(eval_config_from_dict(raw, where), base)


def run(args) -> int:
    from rich.console import Console

    from honed.eval.runner import evaluate
    from honed.eval.summary import print_summary
    from honed.train.distributed import is_main_process, launched_by_torchrun

    if args.cv is not None:
        if args.nproc_per_node is not None:
            from honed.errors import ConfigError

            raise ConfigError("--cv trains its folds; --nproc-per-node applies to a plain evaluation only")
        return run_cv(args)
    cfg = build_config(args)
    if args.guard:  # gate.json only (no embedder): a folder that is no gate stops here, before any worker or model
        from honed.guard.gate import read_gate_config

        read_gate_config(args.guard)
    from honed.commands.infer import load_refusal_calibration

    calibration = load_refusal_calibration(args.refusal_calibration)  # a bad file stops here, before any worker or model
    if args.nproc_per_node is not None:
        return launch_workers(cfg, args)
    run_eval = evaluate
    if launched_by_torchrun():  # a torchrun worker: an error is also recorded for torchrun's failure report
        from torch.distributed.elastic.multiprocessing.errors import record

        run_eval = record(evaluate)
    gate = None
    if args.guard:
        import functools

        from honed.guard.gate import load_gate

        gate = functools.partial(load_gate, args.guard)  # a loader: under torchrun only rank 0 (the scorer) calls it
    result = run_eval(cfg, show_progress=not args.no_progress, gate=gate, refusal_calibration=calibration)
    if not is_main_process():
        return 0  # rank 0 reports
    console = Console(stderr=True)
    print_summary(result.report, Console(), result.output_dir)
    console.print(f"[green]done[/]: {len(result.runs)} model(s), {result.report['data']['n_samples']} samples")
    return 0


def launch_workers(cfg, args) -> int:
    """`--nproc-per-node N`: torchrun's launcher runs `honed eval` on the resolved config in N workers."""
    import tempfile
    from pathlib import Path

    import yaml

    from honed.errors import ConfigError
    from honed.eval.runner import check_output_dir
    from honed.train.launch import launch

    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node}: give at least 1")
    check_output_dir(cfg)  # before any worker starts
    # The workers read the config resolved here (file, overrides and flags in one), so each of them
    # evaluates exactly what this command was given.
    with tempfile.TemporaryDirectory(prefix="honed-eval-") as tmp:
        path = Path(tmp) / "eval.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False), encoding="utf-8")
        flags = (["--no-progress"] if args.no_progress else []) + (["--verbose"] if getattr(args, "verbose", False) else [])
        flags += ["--guard", str(Path(args.guard).resolve())] if args.guard else []  # a flag, not a config key: passed on
        flags += ["--refusal-calibration", str(Path(args.refusal_calibration).resolve())] if args.refusal_calibration else []
        return launch(["eval", str(path), *flags], nproc_per_node=args.nproc_per_node)


def run_cv(args) -> int:
    """`--cv K`: the positional config is a training config; eval flags shape each fold's evaluation."""
    from rich.console import Console

    from honed.config import load_config
    from honed.errors import ConfigError
    from honed.eval.crossval import cross_validate, cv_table

    files = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(files) != 1:
        raise ConfigError("--cv K needs one TRAINING config file (e.g. honed eval --cv 5 train.yaml)")
    for flag in ("model", "adapter", "baseline", "data", "refusal_calibration"):
        if getattr(args, flag):
            raise ConfigError(f"--cv trains its own models on the training config's data; --{flag.replace('_', '-')} does not apply")
    eval_raw = _flags_as_dict(args)
    for key in ("models", "output_dir", "overwrite"):
        eval_raw.pop(key, None)
    result = cross_validate(load_config(files[0], overrides), args.cv, args.output or "cv-report", eval_raw=eval_raw,
                            overwrite=args.overwrite, show_progress=not args.no_progress)
    Console().print(cv_table(result.report))
    Console(stderr=True).print(f"[green]done[/]: {args.cv} folds → {result.output_dir}/cv_report.json")
    return 0
