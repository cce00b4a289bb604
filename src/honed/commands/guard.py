"""`honed guard fit|score|eval|drift`: the out-of-domain gate in front of the model.

  honed guard fit   --in-domain FILE [--out-of-domain FILE [--contrast 1]] --out DIR [--embedder auto] [--target-tpr 0.95]
  honed guard score --guard DIR --input FILE [--output FILE]
  honed guard eval  --guard DIR --in-domain FILE --out-of-domain FILE
  honed guard drift --guard DIR --queries FILE
  honed guard fit-refusal --model RUN_OR_MODEL [--adapter DIR] --train MIX --validation FILE --out FILE [--max-false-refusal 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    guard = sub.add_parser("guard", help="out-of-domain gate: fit, score, eval, drift; fit-refusal: calibrated refusal decisions")
    verbs = guard.add_subparsers(dest="guard_command", metavar="VERB", required=True)

    fit = verbs.add_parser("fit", help="index in-domain questions and calibrate the threshold", formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="example:\n  honed guard fit --in-domain train.jsonl --out-of-domain ood.txt --out runs/gate")
    fit.add_argument("--in-domain", required=True, metavar="FILE", help="data file (its user turns) or text file, one question per line")
    fit.add_argument("--out-of-domain", metavar="FILE", help="optional: questions to refuse (a data file's records marked out of domain, or "
                     "text); indexed for --contrast, a held-out share scored for the report")
    fit.add_argument("--general-questions", action="store_true", help="add honed's built-in general questions (English and Chinese, "
                     "20 topics: the pool of `honed data add-refusals`) to the out-of-domain examples")
    fit.add_argument("--exclude-topic", action="append", default=[], metavar="TOPIC", help="with --general-questions: leave out a built-in "
                     "topic that is your domain (repeatable; e.g. cooking)")
    fit.add_argument("--contrast", type=float, default=1.0, metavar="W", help="with --out-of-domain: a question's score is its in-domain "
                     "score minus W x its score against the out-of-domain examples (default 1); 0: they are only scored for the report")
    fit.add_argument("--out", required=True, metavar="DIR", help="gate folder to write")
    fit.add_argument("--embedder", default="auto", help="auto (MiniLM for Latin script, zh-words for Chinese), default, char-ngram, zh-words, llm:DIR, or a sentence-transformers folder")
    fit.add_argument("--score", default="knn", choices=["knn", "centroid", "mahalanobis"])
    fit.add_argument("--k", type=int, default=3, help="neighbours averaged by the knn score")
    fit.add_argument("--target-tpr", type=float, default=0.95, help="share of in-domain questions, each scored unseen, the threshold lets through")
    fit.add_argument("--calibration-fraction", type=float, default=0.2, help="calibration: 1/F folds of cross-fitting (up to 10,000 "
                     "questions a route), or the share held out of the index (above)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the calibration folds or split")
    fit.add_argument("--refusal", help="answer given to out-of-domain questions (default: English or Chinese by the question)")
    fit.add_argument("--refusal-zh", help="answer given to out-of-domain Chinese questions")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing gate folder")
    fit.set_defaults(func=run_fit)

    score = verbs.add_parser("score", help="one JSON line per question: text, score, in_domain")
    score.add_argument("--guard", required=True, metavar="DIR")
    score.add_argument("--input", required=True, metavar="FILE")
    score.add_argument("--output", metavar="FILE", help="JSONL to write (default: standard output)")
    score.add_argument("--embedder", help="refuse unless the gate was fitted with this embedder")
    score.add_argument("--overwrite", action="store_true")
    score.set_defaults(func=run_score)

    ev = verbs.add_parser("eval", help="AUROC, FPR at 95%% TPR and score histograms on questions the gate never saw")
    ev.add_argument("--guard", required=True, metavar="DIR")
    ev.add_argument("--in-domain", required=True, metavar="FILE")
    ev.add_argument("--out-of-domain", required=True, metavar="FILE")
    ev.add_argument("--plots", metavar="DIR", help="folder for the histogram PNGs (default: DIR-eval beside the gate)")
    ev.add_argument("--embedder", help="refuse unless the gate was fitted with this embedder")
    ev.set_defaults(func=run_eval)

    drift = verbs.add_parser("drift", help="compare logged live queries with the calibration set")
    drift.add_argument("--guard", required=True, metavar="DIR")
    drift.add_argument("--queries", required=True, metavar="FILE", help="query log from --guard-log (JSONL) or text, one query per line, oldest first")
    drift.add_argument("--recent", type=int, default=500, help="how many of the last queries count as recent")
    drift.add_argument("--near", type=float, default=0.05, help="near the threshold = within this calibration quantile of it")
    drift.add_argument("--cluster-distance", type=float, default=0.6, help="cosine distance that still joins two refused queries into a topic")
    drift.set_defaults(func=run_drift)

    refusal = verbs.add_parser("fit-refusal", help="calibrated refusal decisions: fit P(refuse)'s threshold for chat/generate/eval/serve --refusal-calibration",
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="example:\n  honed guard fit-refusal --model honed-quickstart --train mix.jsonl --validation val.jsonl "
                                      "--out honed-quickstart/refusal_calibration.json")
    refusal.add_argument("--model", metavar="MODEL_OR_RUN", help="model folder, adapter folder or `honed train` run folder (its tuned weights)")
    refusal.add_argument("--adapter", metavar="DIR", help="LoRA adapter on top of --model")
    refusal.add_argument("--train", required=True, action="append", metavar="FILE", help="the training data mix (repeatable): its "
                         "refusal records (`kind: refusal`/`out_of_domain`) give the refusal openings, its other records the answers")
    refusal.add_argument("--validation", action="append", metavar="FILE", help="questions with a `kind` (repeatable): the threshold "
                         "separates those to answer (in_domain, hard_negative) from those to refuse (out_of_domain, near_domain)")
    refusal.add_argument("--out", required=True, metavar="FILE", help="calibration file to write (JSON; a folder, e.g. the adapter's: "
                         "DIR/refusal_calibration.json, which --refusal-calibration DIR reads)")
    refusal.add_argument("--max-false-refusal", type=float, metavar="SHARE", help="the lowest threshold that refuses at most this share "
                         "of the validation questions to answer (default: maximise Youden's J)")
    refusal.add_argument("--threshold", type=float, metavar="P", help="fix the threshold instead of fitting it (0..1; 1 bans every "
                         "refusal opening wherever the model is not certain)")
    refusal.add_argument("--system", help="scope prompt the questions are asked under (default: the one saved with the model)")
    refusal.add_argument("--no-scope-prompt", action="store_true", help="ask without the scope prompt saved with the model")
    refusal.add_argument("--min-opening-tokens", type=int, default=1, help="shortest refusal opening, in tokens (default 1)")
    refusal.add_argument("--max-opening-tokens", type=int, default=8, help="a refusal still opening like an answer after this many tokens is dropped")
    refusal.add_argument("--template", default="auto", help="chat template name (default: the tokenizer's own)")
    refusal.add_argument("--device", default="auto")
    refusal.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    refusal.add_argument("--overwrite", action="store_true", help="replace an existing calibration file")
    refusal.set_defaults(func=run_fit_refusal)


def _questions(path: str, kind: str | None, what: str) -> list[str]:
    from honed.guard.questions import read_questions

    qs = read_questions(path, kind)
    if qs.skipped:
        print(f"{what} {path}: {len(qs.texts)} questions; skipped {qs.describe_skips()}", file=sys.stderr)
    return qs.texts


def run_fit(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from honed.errors import ConfigError, DataError
    from honed.guard.fit import fit_gate

    if args.exclude_topic and not args.general_questions:
        raise ConfigError("--exclude-topic leaves topics out of the built-in general questions; add --general-questions, or drop it")
    in_domain = _questions(args.in_domain, "in_domain", "in-domain")
    if not in_domain:
        raise DataError(f"--in-domain {args.in_domain}: no questions found (an empty file?); the gate needs examples of the domain")
    ood = _questions(args.out_of_domain, "out_of_domain", "out-of-domain") if args.out_of_domain else None
    report = fit_gate(in_domain, args.out, embedder=args.embedder, score=args.score, k=args.k, target_tpr=args.target_tpr, out_of_domain=ood,
                      contrast=args.contrast, calibration_fraction=args.calibration_fraction, seed=args.seed, refusal=args.refusal, refusal_zh=args.refusal_zh,
                      overwrite=args.overwrite, source=args.in_domain, general_questions=args.general_questions, exclude_topics=set(args.exclude_topic))
    table = Table(title=f"gate {args.out} ({args.score}, target pass rate {args.target_tpr})")
    for col in ("route", "embedder", "indexed", "ood indexed", "calibrated on", "threshold", "pass rate", "ood held out", "AUROC", "ood passed"):
        table.add_column(col)
    for p in report.parts:
        table.add_row(p.route, p.embedder, str(p.indexed), str(p.ood_indexed), str(p.held_out), f"{p.threshold:.4f}", f"{p.pass_rate:.1%}", str(p.ood),
                      "-" if p.auroc is None else f"{p.auroc:.3f}", "-" if p.fpr is None else f"{p.fpr:.1%}")
    Console(stderr=True).print(table)
    for p in report.parts:
        how = (f"{p.folds}-fold cross-fitting: all {p.held_out} questions indexed, each scored against the other folds" if p.folds else
               f"{args.calibration_fraction:.0%} of the distinct questions ({p.held_out}) held out of the index")
        print(f"calibration ({p.route}, seed {args.seed}): {how}", file=sys.stderr)
    return 0


def run_score(args) -> int:
    from honed.guard.gate import load_gate
    from honed.utils.fs import check_writable, write_text_atomic

    if args.output:
        check_writable(args.output, args.overwrite)
    gate = load_gate(args.guard, embedder=args.embedder)
    texts = _questions(args.input, None, "input")
    lines = [json.dumps({"text": t, "score": round(d.score, 6), "in_domain": d.in_domain, "threshold": round(d.threshold, 6), "route": d.route}, ensure_ascii=False)
             for t, d in zip(texts, gate.check_many(texts))]
    if args.output:
        write_text_atomic(args.output, "\n".join(lines) + ("\n" if lines else ""))
        print(f"scored {len(lines)} questions into {args.output}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


def run_eval(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from honed.guard.evaluate import evaluate_gate
    from honed.guard.gate import load_gate

    gate = load_gate(args.guard, embedder=args.embedder)
    in_domain = _questions(args.in_domain, "in_domain", "in-domain")
    ood = _questions(args.out_of_domain, "out_of_domain", "out-of-domain")
    plots = Path(args.plots) if args.plots else Path(args.guard).with_name(Path(args.guard).name + "-eval")
    report = evaluate_gate(gate, in_domain, ood, plots)
    table = Table(title=f"gate {args.guard} on {len(in_domain)} in-domain / {len(ood)} out-of-domain questions")
    for col in ("split", "in", "out", "AUROC", "FPR@95%TPR", "threshold@95%TPR", "gate threshold", "pass (in)", "pass (out)"):
        table.add_column(col)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in report.rows:
        table.add_row(r.name, str(r.n_in), str(r.n_out), fmt(r.auroc, ".4f"), fmt(r.fpr_at_95, ".3f"), fmt(r.threshold_at_95, ".4f"),
                      fmt(r.gate_threshold, ".4f"), f"{r.tpr:.1%}", f"{r.fpr:.1%}")
    Console(stderr=True).print(table)
    overall = report.rows[0]
    print(f"AUROC {overall.auroc:.4f}")
    print(f"FPR@95%TPR {overall.fpr_at_95:.4f}")
    print(f"threshold@95%TPR {overall.threshold_at_95:.4f}")
    for route, part in gate.parts.items():
        print(f"threshold[{route}] {part.threshold:.4f}")
    for path in report.plots:
        print(f"histogram: {path}", file=sys.stderr)
    return 0


def run_drift(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from honed.guard.drift import drift_report, psi_verdict
    from honed.guard.gate import load_gate

    gate = load_gate(args.guard)
    queries = _questions(args.queries, None, "queries")
    report = drift_report(gate, queries, recent=args.recent, near=args.near, cluster_distance=args.cluster_distance)
    console = Console()
    table = Table(title=f"drift of {report.n_queries} queries against the calibration set (recent = last {report.n_recent})")
    for col in ("route", "queries", "calibration", "PSI", "", "KS", "KS p", "near threshold (recent)", "refused"):
        table.add_column(col)
    for r in report.routes:
        table.add_row(r.route, str(r.n_queries), str(r.n_calibration), f"{r.psi:.3f}", psi_verdict(r.psi), f"{r.ks:.3f}", f"{r.ks_pvalue:.3g}",
                      f"{r.near_share:.1%}", f"{r.refused_share:.1%}")
    console.print(table)
    if report.topics:
        topics = Table(title="recurring out-of-domain topics")
        topics.add_column("queries")
        topics.add_column("examples")
        for t in report.topics:
            topics.add_row(str(t.size), " | ".join(t.examples))
        console.print(topics)
    else:
        console.print("no recurring out-of-domain topics")
    return 0


def run_fit_refusal(args) -> int:
    import statistics

    from rich.console import Console
    from rich.table import Table

    from honed.errors import ConfigError, DataError
    from honed.guard.refusal_fit import fit_calibration
    from honed.infer.generate import ChatModel
    from honed.infer.refusal_calibration import calibration_path
    from honed.model.reference import resolve_model_reference
    from honed.utils.fs import check_writable

    if not args.model and not args.adapter:
        raise ConfigError("give --model (a model, adapter or `honed train` run folder) and optionally --adapter DIR")
    if args.threshold is None and not args.validation:
        raise ConfigError("give --validation FILE (questions whose `kind` says answer or refuse) to fit the threshold, or --threshold P")
    if args.threshold is not None and args.max_false_refusal is not None:
        raise ConfigError("--threshold fixes the threshold; --max-false-refusal fits it: give one of them")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold}: a P(refuse) threshold is in [0, 1]")
    if args.max_false_refusal is not None and not 0.0 <= args.max_false_refusal < 1.0:
        raise ConfigError(f"--max-false-refusal {args.max_false_refusal}: give a share in [0, 1), e.g. 0.05")
    if args.min_opening_tokens < 1 or args.max_opening_tokens < args.min_opening_tokens:
        raise ConfigError("--min-opening-tokens must be at least 1 and --max-opening-tokens at least as large")
    for flag, paths in (("--train", args.train), ("--validation", args.validation or [])):
        for path in paths:
            if not Path(path).is_file():
                raise DataError(f"{flag} {path}: no such file")
    check_writable(calibration_path(args.out), args.overwrite)  # before the model loads
    ref = resolve_model_reference(args.model, args.adapter)
    scope = args.system if args.system is not None or args.no_scope_prompt else ref.scope_prompt
    bot = ChatModel.load(ref.base, adapter=ref.adapter, template=args.template, device=args.device, dtype=args.dtype)
    cal = fit_calibration(bot, args.train, args.validation or [], system_prompt=scope, min_tokens=args.min_opening_tokens,
                          max_tokens=args.max_opening_tokens, max_false_refusal=args.max_false_refusal, threshold=args.threshold)
    cal.fitted["model"] = ref.describe()
    cal.fitted["scope_prompt"] = bool(scope)
    path = cal.save(args.out, overwrite=args.overwrite)
    fitted = cal.fitted
    table = Table(title=f"refusal calibration {path} ({fitted['rule']}, threshold {cal.threshold:.4f})")
    for col in ("split", "questions", "P(refuse) min", "median", "max", "at or above threshold"):
        table.add_column(col)
    for split, scores in fitted["p_refuse"].items():
        table.add_row(split, str(len(scores)), f"{min(scores):.3f}", f"{statistics.median(scores):.3f}", f"{max(scores):.3f}",
                      f"{sum(x >= cal.threshold for x in scores)}/{len(scores)}")
    console = Console(stderr=True)
    if fitted["p_refuse"]:
        console.print(table)
    else:
        console.print(f"refusal calibration {path}: threshold fixed at {cal.threshold:.4f} (no validation questions scored)")
    console.print(f"{len(cal.openings)} refusal openings (up to {cal.k} tokens): " + ", ".join(repr(t) for t in cal.opening_texts[:8])
                  + (" ..." if len(cal.openings) > 8 else ""))
    if fitted.get("validation_auroc") is not None:
        console.print(f"validation AUROC of P(refuse) (refuse vs answer): {fitted['validation_auroc']:.3f}")
    if fitted["dropped_refusals"]:
        console.print(f"skipped {len(fitted['dropped_refusals'])} refusal(s) that open like an answer for {args.max_opening_tokens} tokens")
    if fitted["unmarked_validation_records"]:
        console.print(f"skipped {fitted['unmarked_validation_records']} validation record(s) without a `kind`")
    print(f"threshold {cal.threshold:.6f}")
    return 0
