"""Does structure-level augmentation make a model robust to a changed label wording or output format?

Trains the tiny shipped base twice on the shipped sentiment set (src/honed/resources/sentiment/):
once on the data as it is, once with its recipe (label_synonym + label_expression with `ask`)
applied on the fly, every epoch a new draw. Both are then asked three test sets: as in training,
with other label words, and with a JSON answer format. CPU, a few minutes.

    python scripts/robustness_demo.py --out runs/robustness      # prints the table, writes results.json

Scoring is `honed eval` on each test set with the record's `expect` field (the exact answer
asked for) as the label: exact match (the answer is exactly what was asked) and macro F1 over
the asked answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from honed.config import config_from_dict
from honed.quickstart import resource_path, tiny_model_path
from honed.train.sft import train

DATA = resource_path("sentiment")


def config(out: Path, augment: bool, epochs: int, device: str):
    data = {"train": [str(DATA / "train.jsonl")], "max_seq_length": 128}
    if augment:
        data.update(augment=str(DATA / "recipe.yaml"), augment_mode="on_the_fly")
    return config_from_dict({
        "model": {"name_or_path": str(tiny_model_path())},
        "data": data,
        "method": "full",
        "training": {"output_dir": str(out), "overwrite": True, "epochs": epochs, "batch_size": 8,
                     "learning_rate": 1e-3, "warmup_ratio": 0.05, "save_total_limit": 1, "seed": 42,
                     "device": device, "tensorboard": False},
    }, "robustness_demo")


# The answers each test set asks for (its `expect` field): honed eval scores exact match against
# them and per-class F1 over them.
ASKED = {"test": ["positive", "negative", "neutral", "积极", "消极", "中性"],
         "test_wording": ["favourable", "unfavourable", "mixed", "正面", "负面", "中立"],
         "test_format": [json.dumps({"label": w}, ensure_ascii=False) for w in ("positive", "negative", "neutral", "积极", "消极", "中性")]}


def evaluate(model_dir: Path, reports: Path, device: str) -> dict:
    """`honed eval` on each test set; exact match = the answer is exactly what was asked for."""
    from honed.cli import main as honed

    results = {}
    for name, labels in ASKED.items():
        report = reports / f"eval-{model_dir.name}-{name}"
        code = honed(["eval", "--model", str(model_dir), "--data", str(DATA / f"{name}.jsonl"), "--labels", ",".join(labels),
                      "--output", str(report), "--overwrite", "--max-new-tokens", "24", "--device", device, "--no-progress",
                      "data.label_field=expect"])
        if code != 0:
            raise SystemExit(f"honed eval failed on {name} (exit {code})")
        m = json.loads((report / "report.json").read_text())["models"][0]["metrics"]
        results[name] = {"exact_match": round(m["generation"]["exact_match"], 3),
                         "macro_f1": round(m["classification"]["macro"]["f1"], 3), "report": str(report / "report.html")}
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/robustness")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-only", action="store_true", help="evaluate models already trained under --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = {}
    for name, augment in (("baseline", False), ("augmented", True)):
        start = time.time()
        if not args.eval_only:
            res = train(config(out / name, augment, args.epochs, args.device), show_progress=False)
            results[name] = {"final_loss": round(res.losses[-1], 4), "train_seconds": round(time.time() - start)}
        results.setdefault(name, {}).update(evaluate(out / name, out, args.device))
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"{'':10s} {'test':>16s} {'test_wording':>16s} {'test_format':>16s}   (exact match / macro F1, honed eval)")
    for name, r in results.items():
        print(f"{name:10s} " + " ".join(f"{r[t]['exact_match']:>7.3f} / {r[t]['macro_f1']:.3f}" for t in ASKED))
    print(f"details: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
