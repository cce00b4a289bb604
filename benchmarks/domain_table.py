"""The domain-restriction table of the README: which combination keeps the sample expert in its domain.

On the shipped sample domain (clinical-laboratory Q&A, English + Chinese) and the tiny quickstart
model, CPU only, it measures with `honed eval` on the held-out set (`clinical_lab_eval.jsonl`:
in-domain, out-of-domain and near-domain questions that belong, `kind: hard_negative`):

1. the tuned model alone — the quickstart adapter, trained on the refusal mix;
2. the gate alone — `honed guard fit` (default embedder) on the training questions, with the training
   mix's out-of-domain questions as contrast examples (and, with `--general-questions`, honed's
   built-in general questions), in front of the untuned base;
3. both — the gate in front of the tuned model;
4. the best merge alpha — `honed merge --sweep` interpolates base ↔ tuned and recommends an alpha
   by its stated rule; that alpha's model alone;
5. calibrated refusal decisions — `honed guard fit-refusal` takes the refusal openings from the
   training mix and fits the P(refuse) threshold on the validation file (`clinical_lab_val.jsonl`),
   then `honed eval --refusal-calibration` measures the tuned model with it, alone and behind the gate;
6. with `--dpo`: DPO after SFT — `honed data make-pairs` builds refusal pairs (rejected = the base
   model's own off-scope answers) and hard negatives (rejected = a wrong refusal) from the training
   mix, balanced by `--dpo-balance`; `honed train` runs DPO with RPO's SFT term from the tuned adapter;
   the result alone and behind the gate.

Beside the table it writes the P(refuse) diagnostics of the calibration: its spread per split on
the validation and held-out sets, its AUROC (should-refuse vs rest), and the same model with every
refusal opening banned (`fit-refusal --threshold 1`), which shows the refusals no opening ban moves.

A gate "in front" is measured by `honed eval --guard DIR` the way `chat`/`generate --guard` behave:
a question the gate refuses counts as refused whatever the model says; the others are judged from
the model's answer.

    python benchmarks/domain_table.py --out runs/domain-table [--tuned honed-quickstart] [--overwrite]
    python benchmarks/domain_table.py --out runs/domain-smollm2 --base /models/smollm2-135m --dpo --general-questions   # a real model

`--base DIR` measures another base model: the quickstart trains its real-model recipe on it (LoRA r=16,
3 epochs, lr 2e-4), and the gate-alone row, the merge sweep and the DPO pairs use it.

Writes `OUT/domain_table.md` (the README's table and the P(refuse) diagnostics) and
`OUT/domain_table.json`, and every intermediate (`tuned/`, `gate/`, `refusal_calibration*.json`,
`eval-*/`, `merge/`) beside them. Without `--tuned` it trains the
quickstart adapter first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

from honed.cli import main as honed
from honed.quickstart import resource_path, sample_data_path, tiny_model_path

EVAL_DATA = resource_path("sample_data", "clinical_lab_eval.jsonl")
VALIDATION = resource_path("sample_data", "clinical_lab_val.jsonl")
SCOPE = resource_path("sample_data", "system_prompt.txt")
SPLITS = (("out_of_domain", "refused_rate", "OOD refused"), ("in_domain", "answered_rate", "in-domain answered"),
          ("in_domain", "refused_rate", "in-domain false refusals"), ("hard_negative", "refused_rate", "near-domain false refusals"))


def _run(argv: list[str]) -> None:
    print("$ honed " + " ".join(argv), flush=True)
    if honed(argv) != 0:
        raise SystemExit(f"honed {argv[0]} failed; see above")


def first_sentence_pattern() -> str:
    """A pattern that finds one of the default refusal phrases in an answer's first sentence: a tiny
    model's garbled answer that drifts into a refusal fragment halfway ("... C marker outside my scope
    as it may be raised") is an answer."""
    from honed.eval.metrics.refusal import DEFAULT_PHRASES

    alternatives = "|".join(re.escape(p).replace("'", "['’]") for p in DEFAULT_PHRASES)
    return rf"^[^.!?。！？\n]*?(?:{alternatives})"


def first_sentence_overrides() -> list[str]:
    """`honed eval` overrides for the first-sentence refusal detector (`first_sentence_pattern`)."""
    return ["refusal.phrases=[]", "refusal.patterns=" + json.dumps([first_sentence_pattern()])]


def fresh_output(out: Path, overwrite: bool) -> bool:
    """Make `out` an empty folder; False (and a message) when it holds files and `overwrite` is not set."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            print(f"{out} is not empty; give --overwrite to replace it", file=sys.stderr)
            return False
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return True


def quickstart_adapter(tuned: str | None, out: Path, base: str | None) -> str:
    """`tuned` (a `honed quickstart` folder to reuse), else the quickstart adapter trained into OUT/tuned
    (on `base` when given, else on the shipped tiny model)."""
    if tuned is None:
        tuned = str(out / "tuned")
        _run(["quickstart", "--output", tuned, "--device", "cpu", *(["--model", base] if base else [])])
    return tuned


def dpo_after_sft(base: str, tuned: str, out: Path, balance: str, learning_rate: float) -> str:
    """Preference pairs from the training mix (the base model's off-scope answers as the rejected side),
    then DPO with RPO's SFT term continuing the tuned adapter; returns the DPO run folder."""
    pairs = out / "pairs.jsonl"
    _run(["data", "make-pairs", str(sample_data_path()), "-o", str(pairs), "--model", base, "--system-prompt-file", str(SCOPE),
          "--balance", balance, "--max-new-tokens", "64", "--device", "cpu"])
    adapter = json.loads((Path(tuned) / "adapter_config.json").read_text(encoding="utf-8"))
    run = out / "dpo"
    config = {
        "model": {"name_or_path": base},
        "data": {"train": [str(pairs)], "system_prompt_file": str(SCOPE), "max_seq_length": 512, "packing": True},
        "objective": "dpo",
        # rpo_alpha: DPO alone on these pairs lost the SFT model's refusals (README, "Preference training").
        "preference": {"beta": 0.1, "loss_type": "sigmoid", "rpo_alpha": 1.0, "reference": "auto"},
        "method": "lora",
        "lora": {"r": adapter["r"], "alpha": adapter["lora_alpha"], "init_from": tuned},
        "training": {"output_dir": str(run), "epochs": 2, "batch_size": 8, "learning_rate": learning_rate,
                     "lr_scheduler": "cosine", "warmup_ratio": 0.1, "seed": 42, "tensorboard": False, "device": "cpu"},
    }
    config_file = out / "dpo.json"
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    _run(["train", str(config_file)])
    return str(run)


def fit_gate(gate: Path, general_questions: bool) -> None:
    """The default gate on the training mix: its in-domain questions indexed, its refusal records as contrast examples."""
    _run(["guard", "fit", "--in-domain", str(sample_data_path()), "--out-of-domain", str(sample_data_path()), "--out", str(gate),
          *(["--general-questions"] if general_questions else [])])


def evaluate(model: str, out: Path, max_new_tokens: int, gate: Path | None, extra: list[str]) -> dict:
    argv = ["eval", "--model", model, "--data", str(EVAL_DATA), "--system-prompt-file", str(SCOPE), "--output", str(out),
            "--max-new-tokens", str(max_new_tokens), "--batch-size", "16", "--device", "cpu", "--no-progress", "--overwrite"]
    _run(argv + (["--guard", str(gate)] if gate else []) + extra)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report["models"][0]["metrics"]["domain"]


def fit_refusal(tuned: str, out: Path, *extra: str) -> Path:
    """`honed guard fit-refusal` for the tuned model under the scope prompt the evaluation uses."""
    scope = SCOPE.read_text(encoding="utf-8").strip()
    _run(["guard", "fit-refusal", "--model", tuned, "--train", str(sample_data_path()), "--validation", str(VALIDATION),
          "--out", str(out), "--system", scope, "--device", "cpu", *extra])
    return out


def p_refuse_held_out(eval_dir: Path) -> dict[str, list[float]]:
    """The evaluated model's P(refuse) per split, from `honed eval`'s per-sample output."""
    by_split: dict[str, list[float]] = {}
    for line in (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        sample = next(iter(record["models"].values()))
        by_split.setdefault(record["split"], []).append(sample["refusal_probability"])
    return by_split


def diagnostics(calibration: dict, held_out: dict, held_out_auroc: float, banned: dict) -> str:
    """The P(refuse) tables under the domain table: spread per split, AUROC, every opening banned."""
    def spread(values):
        return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"

    splits = [s for s in ("in_domain", "hard_negative", "out_of_domain") if s in held_out]
    fitted = calibration["fitted"]
    lines = [f"Refusal openings ({len(calibration['openings'])}): " + ", ".join(f"`{t}`" for t in calibration["opening_texts"]), "",
             "| P(refuse): min / median / max | " + " | ".join(splits) + " | AUROC |", "|---" * (len(splits) + 2) + "|",
             "| validation | " + " | ".join(spread(fitted["p_refuse"][s]) for s in splits) + f" | {fitted['validation_auroc']:.3f} |",
             "| held-out | " + " | ".join(spread(held_out[s]) for s in splits) + f" | {held_out_auroc:.3f} |", "",
             f"Threshold fitted on the validation set ({fitted['rule']}): {calibration['threshold']:.3f}. "
             f"With every refusal opening banned (threshold 1): {banned['counts']['in_domain'][0]}/{banned['counts']['in_domain'][1]} "
             f"in-domain and {banned['counts']['hard_negative'][0]}/{banned['counts']['hard_negative'][1]} near-domain false refusals, "
             f"{banned['counts']['out_of_domain'][0]}/{banned['counts']['out_of_domain'][1]} out-of-domain refused."]
    return "\n".join(lines) + "\n"


def row(name: str, domain: dict) -> dict:
    per_split = domain["per_split"]
    values = {label: per_split[split][key] for split, key, label in SPLITS}
    counts = {split: (per_split[split]["refused"], per_split[split]["n"]) for split, _, _ in SPLITS}
    return {"system": name, **values, "counts": counts}


def markdown(rows: list[dict], note: str) -> str:
    head = "| system | " + " | ".join(label for _, _, label in SPLITS) + " |"
    lines = [head, "|---" * (len(SPLITS) + 1) + "|"]
    for r in rows:
        cells = []
        for split, key, label in SPLITS:
            refused, n = r["counts"][split]
            k = refused if key == "refused_rate" else n - refused
            cells.append(f"{r[label]:.0%} ({k}/{n})")
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--tuned", help="a `honed quickstart` output folder to reuse (default: train one into OUT/tuned)")
    ap.add_argument("--base", help="base model folder (default: the shipped tiny model)")
    ap.add_argument("--dpo", action="store_true", help="add DPO after SFT (make-pairs, then DPO from the tuned adapter)")
    ap.add_argument("--dpo-balance", choices=["upsample", "downsample", "none"], default="downsample",
                    help="make-pairs --balance for the DPO pairs (default downsample: fewest steps)")
    ap.add_argument("--dpo-lr", type=float, help="DPO learning rate (default 5e-4 on the tiny model, 5e-5 on --base)")
    ap.add_argument("--sweep", default="0,0.25,0.5,0.75,1", help="merge alphas (default 0,0.25,0.5,0.75,1)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length (the sample answers are <= 45 words / 70 characters)")
    ap.add_argument("--refusal-in", choices=["answer", "first-sentence"], default="answer",
                    help="where a refusal phrase must appear: anywhere in the answer (honed eval's default) or in its first sentence")
    ap.add_argument("--general-questions", action="store_true", help="fit the gate with `--general-questions` (built-in general questions as contrast)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = ap.parse_args()

    out = Path(args.out)
    if not fresh_output(out, args.overwrite):
        return 2
    tuned = quickstart_adapter(args.tuned, out, args.base)
    base = args.base or str(tiny_model_path())

    extra = first_sentence_overrides() if args.refusal_in == "first-sentence" else []
    rows = [row("tuned model alone", evaluate(tuned, out / "eval-tuned", args.max_new_tokens, None, extra))]
    gate = out / "gate"
    # The training mix's refusal records are the out-of-domain examples (indexed for the gate's contrast).
    fit_gate(gate, args.general_questions)
    rows.append(row("gate alone (untuned base)", evaluate(base, out / "eval-gate", args.max_new_tokens, gate, extra)))
    rows.append(row("gate + tuned model", evaluate(tuned, out / "eval-both", args.max_new_tokens, gate, extra)))

    # Calibrated refusal decisions, through the CLI: fit-refusal, then eval --refusal-calibration.
    cal = fit_refusal(tuned, out / "refusal_calibration.json")
    calibrated = ["--refusal-calibration", str(cal)]
    tuned_cal = evaluate(tuned, out / "eval-tuned-calibrated", args.max_new_tokens, None, extra + calibrated)
    rows.append(row("tuned model, calibrated refusals", tuned_cal))
    rows.append(row("gate + tuned model, calibrated refusals",
                    evaluate(tuned, out / "eval-both-calibrated", args.max_new_tokens, gate, extra + calibrated)))
    every = fit_refusal(tuned, out / "refusal_calibration_ban_all.json", "--threshold", "1")
    banned = row("every refusal opening banned", evaluate(tuned, out / "eval-tuned-banned", args.max_new_tokens, None,
                                                          extra + ["--refusal-calibration", str(every)]))
    calibration = json.loads(cal.read_text(encoding="utf-8"))
    diagnosis = diagnostics(calibration, p_refuse_held_out(out / "eval-tuned-calibrated"), tuned_cal["auroc"], banned)

    eval_cfg = out / "sweep_eval.yaml"
    eval_cfg.write_text(f"data: {{path: {EVAL_DATA}, system_prompt_file: {SCOPE}}}\n"
                        f"generation: {{max_new_tokens: {args.max_new_tokens}, batch_size: 16}}\ndevice: cpu\n", encoding="utf-8")
    _run(["merge", "--base", base, "--tuned", tuned, "--out", str(out / "merge"), "--sweep", args.sweep,
          "--eval", str(eval_cfg), "--no-general", "--no-progress", *[x for o in extra for x in ("--eval-set", o)]])
    sweep = json.loads((out / "merge" / "sweep.json").read_text(encoding="utf-8"))
    alpha = sweep["recommended_alpha"]
    by_name = {m["name"]: m["metrics"]["domain"] for m in
               json.loads((out / "merge" / "eval" / "report.json").read_text(encoding="utf-8"))["models"]}
    rows.append(row(f"merge, best alpha = {alpha:g}", by_name[f"alpha={alpha:g}"]))
    if args.dpo:
        learning_rate = args.dpo_lr or (5e-5 if args.base else 5e-4)
        dpo = dpo_after_sft(base, tuned, out, args.dpo_balance, learning_rate)
        rows.append(row("tuned + DPO", evaluate(dpo, out / "eval-dpo", args.max_new_tokens, None, extra)))
        rows.append(row("gate + tuned + DPO", evaluate(dpo, out / "eval-dpo-gate", args.max_new_tokens, gate, extra)))
    note = (f"Measured by `python benchmarks/domain_table.py` with `honed eval` on the shipped held-out set "
            f"(`clinical_lab_eval.jsonl`), greedy, {args.max_new_tokens} new tokens, refusal phrases looked for in the {'first sentence' if extra else 'whole answer'}; CPU only, "
            + (f"base `{Path(base).name}`" if args.base else "the 6 MiB tiny quickstart model, not a real LLM")
            + f". Merge sweep {args.sweep}: {sweep['reason']}."
            + (f" DPO: make-pairs --balance {args.dpo_balance}, 2 epochs, batch 8, beta 0.1, rpo_alpha 1.0, lr {learning_rate:g}." if args.dpo else ""))
    table = markdown(rows, note) + "\n" + diagnosis
    (out / "domain_table.md").write_text(table, encoding="utf-8")
    (out / "domain_table.json").write_text(json.dumps({"rows": rows, "sweep": sweep, "banned": banned,
                                                       "refusal_calibration": {"threshold": calibration["threshold"],
                                                                               "held_out_auroc": tuned_cal["auroc"]}},
                                                      indent=2, ensure_ascii=False), encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
