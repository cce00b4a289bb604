"""How steady is the gate across calibration seeds, and what does each Chinese route and contrast set do?

Fits the default `auto` gate the way the README's domain table does (`honed guard fit --in-domain MIX
--out-of-domain MIX`, the training mix of the sample data) with calibration seeds 0–4, with the Chinese
route on `char-ngram` (the earlier default) or `zh-words` (the default now), each with and without
`--general-questions`, and counts how many held-out questions each gate lets through: the eval file's
in-domain + near-domain questions (25 per language) and out-of-domain ones (10 per language), plus
two lists written for this benchmark and never used in fitting: 15 Chinese lab questions
(`extra_in_domain_zh.txt`) and 40 Chinese general questions (`extra_out_of_domain_zh.txt`). Each cell is the lowest–highest count over the seeds.

`--held-out` places the threshold the other way, on a held-out fifth of the questions kept out of the
index (what `honed guard fit` does above 10,000 questions a route), instead of cross-fitting.

    PYTHONPATH=src python benchmarks/guard/seeds.py [--seeds 5] [--held-out]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from unittest import mock

import honed.guard.calibration as calibration_module
import honed.guard.gate as gate_module
from honed.guard.fit import fit_gate
from honed.guard.gate import load_gate
from honed.guard.questions import read_questions
from honed.quickstart import resource_path, sample_data_path

HERE = Path(__file__).parent


def held_out_sets() -> dict[str, list[str]]:
    records = [json.loads(line) for line in resource_path("sample_data", "clinical_lab_eval.jsonl").read_text(encoding="utf-8").splitlines()]

    def questions(kinds, lang):
        return [r["messages"][0]["content"] for r in records if r["kind"] in kinds and r["lang"] == lang]

    extra = {name: [q for q in (HERE / f"extra_{name}_zh.txt").read_text(encoding="utf-8").splitlines() if q.strip()]
             for name in ("in_domain", "out_of_domain")}
    return {"in-domain en": questions(("in_domain", "hard_negative"), "en"), "in-domain zh": questions(("in_domain", "hard_negative"), "zh"),
            "extra in-domain zh": extra["in_domain"], "out-of-domain en": questions(("out_of_domain",), "en"),
            "out-of-domain zh": questions(("out_of_domain",), "zh"), "extra out-of-domain zh": extra["out_of_domain"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="calibration seeds 0..N-1")
    ap.add_argument("--held-out", action="store_true", help="calibrate on a held-out share instead of cross-fitting")
    args = ap.parse_args()
    if args.held_out:
        calibration_module.CROSS_FIT_MAX = 0
    mix = sample_data_path()
    in_domain, out_of_domain = read_questions(mix, "in_domain").texts, read_questions(mix, "out_of_domain").texts
    sets = held_out_sets()
    print("| Chinese route | contrast examples | " + " | ".join(f"{name} passed (of {len(qs)})" for name, qs in sets.items()) + " |")
    print("|---|---|" + "---|" * len(sets))
    for cjk in ("char-ngram", "zh-words"):
        for general in (False, True):
            passed: dict[str, list[int]] = {name: [] for name in sets}
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(gate_module.AUTO_EMBEDDERS, {"cjk": cjk}):
                    fit_gate(in_domain, f"{tmp}/gate", out_of_domain=out_of_domain, seed=seed, general_questions=general)
                    gate = load_gate(f"{tmp}/gate")
                    for name, questions in sets.items():
                        passed[name].append(sum(d.in_domain for d in gate.check_many(questions)))
            contrast = "mix + general questions" if general else "mix"
            print(f"| {cjk} | {contrast} | " + " | ".join(spread(counts) for counts in passed.values()) + " |", flush=True)


def spread(counts: list[int]) -> str:
    """`lo–hi` over the seeds (one number when they agree)."""
    return str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"


if __name__ == "__main__":
    main()
