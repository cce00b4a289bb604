"""Calibrated refusal decisions on the sample domain: does P(refuse) tell the tuned tiny model's
false refusals from its right ones, and does deciding on it bring false refusals to <= 5%?

For each question of the shipped validation set (`clinical_lab_val.jsonl`) and held-out set
(`clinical_lab_eval.jsonl`) it computes P(refuse) — the total probability of opening the reply with
one of the refusal openings of the training mix (`honed.infer.refusal_calibration`) — fits the
threshold on the validation set only, and answers the held-out set three ways: plainly (greedy, as
`honed eval` does), with every refusal opening banned, and calibrated (banned only where P(refuse)
is below the fitted threshold). Refusals are counted with `honed eval`'s default detector and with
the first-sentence one of `domain_table.py`.

    python benchmarks/refusal_calibration.py --out runs/refusal-calibration [--tuned honed-quickstart]

Writes `OUT/refusal_calibration.json` (the fitted calibration), `OUT/results.json` (every score and
answer) and `OUT/refusal_calibration.md` (the tables). Without `--tuned` it trains the quickstart
adapter first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from domain_table import first_sentence_pattern, fresh_output, quickstart_adapter

from honed.quickstart import resource_path, sample_data_path

VALIDATION, HELD_OUT = "clinical_lab_val.jsonl", "clinical_lab_eval.jsonl"
SPLITS = ("in_domain", "hard_negative", "out_of_domain")


def questions(name: str) -> list[dict]:
    from honed.data.kinds import domain_split

    rows = [json.loads(line) for line in resource_path("sample_data", name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": r["id"], "split": domain_split(r["kind"]), "question": r["messages"][0]["content"]} for r in rows]


def answer(bot, rows: list[dict], scope: str, calibration, max_new_tokens: int) -> list:
    from honed.data.conversation import Conversation, Message
    from honed.infer.generate import GenerationSettings

    bot.refusal_calibration = calibration
    convs = [Conversation([Message("system", scope), Message("user", r["question"])]) for r in rows]
    return bot.generate(convs, GenerationSettings(max_new_tokens=max_new_tokens), batch_size=16)


def counts(rows: list[dict], key: str) -> dict:
    return {s: [sum(r[key] for r in rows if r["split"] == s), sum(r["split"] == s for r in rows)] for s in SPLITS}


def quantiles(values: list[float]) -> str:
    import numpy as np

    q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1.0])
    return " / ".join(f"{v:.3f}" for v in q)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tuned", help="a `honed quickstart` output folder (default: train one into OUT/tuned)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--min-opening-tokens", type=int, default=1, help="shortest refusal opening, in tokens")
    ap.add_argument("--max-false-refusal", type=float, help="fit the threshold to this share of validation false refusals "
                    "(default: maximise Youden's J)")
    ap.add_argument("--gate", help="a gate folder (`honed guard fit`): also count the gate in front, as `honed eval --guard` does")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    if not fresh_output(out, args.overwrite):
        return 2
    tuned = quickstart_adapter(args.tuned, out)

    from honed.eval.metrics import binary_auroc
    from honed.eval.metrics.refusal import RefusalDetector, default_detector
    from honed.infer.generate import ChatModel
    from honed.infer.refusal_calibration import fit_calibration

    bot = ChatModel.load(adapter=tuned, device="cpu")
    scope = resource_path("sample_data", "system_prompt.txt").read_text(encoding="utf-8").strip()
    calibration = fit_calibration(bot, [sample_data_path()], [resource_path("sample_data", VALIDATION)], system_prompt=scope,
                                  min_tokens=args.min_opening_tokens, max_false_refusal=args.max_false_refusal)
    calibration.fitted["model"] = str(Path(tuned).resolve())
    calibration.save(out / "refusal_calibration.json")
    threshold = calibration.threshold
    never = dataclasses.replace(calibration, threshold=0.0)  # no P(refuse) is below 0: plain decoding, P recorded
    always = dataclasses.replace(calibration, threshold=2.0)  # every row below it: every opening banned
    detectors = {"any": default_detector(), "first": RefusalDetector(phrases=[], patterns=[first_sentence_pattern()])}

    held = questions(HELD_OUT)
    for mode, cal in (("plain", never), ("banned", always)):
        for r, reply in zip(held, answer(bot, held, scope, cal, args.max_new_tokens)):
            r["p_refuse"] = reply.refusal_probability
            r[f"{mode}_answer"] = reply.text
            for d, det in detectors.items():
                r[f"{mode}_refused_{d}"] = det.is_refusal(reply.text)
    scores = {"validation": calibration.fitted["p_refuse"],
              "held-out": {s: [r["p_refuse"] for r in held if r["split"] == s] for s in SPLITS}}
    auroc = {label: binary_auroc([s == "out_of_domain" for s in SPLITS for _ in by[s]], [x for s in SPLITS for x in by[s]])
             for label, by in scores.items()}
    stats = {label: {s: quantiles(by[s]) for s in SPLITS} for label, by in scores.items()}

    # The calibrated answers, generated for real at the fitted threshold (not assembled from the two runs above).
    for r, reply in zip(held, answer(bot, held, scope, calibration, args.max_new_tokens)):
        r["calibrated_answer"] = reply.text
        for d, det in detectors.items():
            r[f"calibrated_refused_{d}"] = det.is_refusal(reply.text)

    modes = ["plain", "calibrated", "banned"]
    if args.gate:  # a question the gate refuses counts as refused whatever the model says
        from honed.guard.gate import load_gate

        for r, decision in zip(held, load_gate(args.gate).check_many([r["question"] for r in held])):
            r["gate_in_domain"] = decision.in_domain
            for mode in ("plain", "calibrated"):
                for d in detectors:
                    r[f"gate + {mode}_refused_{d}"] = (not decision.in_domain) or r[f"{mode}_refused_{d}"]
        modes += ["gate + plain", "gate + calibrated"]

    lines = [f"Refusal openings ({len(calibration.openings)}, k = {calibration.k}): " + ", ".join(f"`{t}`" for t in calibration.opening_texts), "",
             "P(refuse) per split (min / 25% / median / 75% / max):", "",
             "| set | AUROC (out-of-domain vs rest) | in-domain | near-domain (hard negatives) | out-of-domain |", "|---|---|---|---|---|"]
    for label in scores:
        lines.append(f"| {label} | {auroc[label]:.3f} | " + " | ".join(stats[label][s] for s in SPLITS) + " |")
    lines += ["", f"Threshold fitted on the validation set ({calibration.fitted['rule']}): **{threshold:.3f}**", "",
              "| held-out, refusals counted | decoding | in-domain false refusals | near-domain false refusals | out-of-domain refused |",
              "|---|---|---|---|---|"]
    for d, what in (("any", "anywhere (honed eval default)"), ("first", "in the first sentence")):
        for mode in modes:
            c = counts(held, f"{mode}_refused_{d}")
            lines.append(f"| {what} | {mode} | " + " | ".join(f"{c[s][0]}/{c[s][1]}" for s in SPLITS) + " |")
    table = "\n".join(lines) + "\n"
    (out / "refusal_calibration.md").write_text(table, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"threshold": threshold, "auroc": auroc, "stats": stats, "held_out": held},
                                                 indent=1, ensure_ascii=False), encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
