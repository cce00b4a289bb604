"""Loss-curve parity of honed's two training paths on a real-shaped model (run on a GPU).

Trains the same LoRA run twice with `honed train` — `training.engine: plain` (transformers as it is,
SDPA) and `training.engine: auto` (the fused CUDA path) — on the shipped clinical-lab data, from the
same random-init model of a real model's shape (Qwen2.5-0.5B's dimensions, vocabulary included),
same seed, same batches. Prints the largest relative difference of the training loss, step by step
and over a 10-step moving average (the curve without the step-to-step noise that bf16 rounding
differences stir up), and writes both curves, the numbers and a plot under --out.

The fused run can take fp8 base weights (`--precision fp8`) and a memory policy that recomputes
(`--memory offload`: every layer is rebuilt in backward, the lean rebuild of `engine.replay`);
the plain run is always bf16 without recompute, the reference. Its curve is kept under --out and
reused by later runs with the same steps and learning rate, so several fused variants cost one
plain run.

    python scripts/engine_parity.py --out /tmp/parity --steps 200
    python scripts/engine_parity.py --out /tmp/parity --steps 200 --precision fp8 --memory offload
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REAL_SHAPE = dict(  # Qwen2.5-0.5B's dimensions; random weights
    model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=4096,
)


def build_model(folder: Path) -> Path:
    """Random-init bf16 model of REAL_SHAPE with the shipped tiny tokenizer (its 3,002 ids fit the vocabulary)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from honed.quickstart import tiny_model_path

    if (folder / "config.json").exists():
        return folder
    kw = dict(REAL_SHAPE)
    config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_path() / name, folder / name)
    return folder


def run_config(model_dir: Path, out: Path, engine: str, steps: int, lr: float = 1e-3, precision: str = "bf16",
               memory: str = "auto") -> dict:
    from honed.quickstart import resource_path

    data = resource_path("sample_data")
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": [str(data / "clinical_lab_train.jsonl")], "max_seq_length": 1024, "packing": True,
                 "val_ratio": 0.0, "system_prompt_file": str(data / "system_prompt.txt")},
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"output_dir": str(out / f"{engine}-{precision}-{memory}"), "max_steps": steps, "batch_size": 4,
                     "learning_rate": lr, "lr_scheduler": "cosine", "warmup_steps": 10, "precision": precision,
                     "memory": memory, "engine": engine, "device": "cuda", "seed": 7, "save_steps": steps,
                     "tensorboard": False, "overwrite": True},
    }


def train_losses(cfg: dict) -> tuple[list[float], str]:
    from honed.config import config_from_dict
    from honed.train.sft import train

    result = train(config_from_dict(cfg, where="engine_parity"), show_progress=False)
    record = json.loads((Path(cfg["training"]["output_dir"]) / "run_info.json").read_text())["model"]
    path = record.get("training_path", "?")
    plan = record.get("memory_plan")
    if plan is not None:  # e.g. "fused, memory offload (24 layers recompute)"
        path += f", memory {plan['mode']} ({plan['checkpointed']} layers recompute)"
    return list(result.losses), path


def plain_losses(model_dir: Path, out: Path, steps: int, lr: float) -> list[float]:
    """The reference curve (plain path, bf16), trained once per (steps, lr) and kept under `out`."""
    cache = out / f"plain_{steps}_lr{lr:g}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    losses, path = train_losses(run_config(model_dir, out, "plain", steps, lr))
    if path != "plain":
        raise SystemExit(f"the reference run took the {path!r} path instead of the plain one")
    cache.write_text(json.dumps(losses))
    return losses


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing means over `window` steps (from the window-th step on).

    >>> moving_average([1.0, 2.0, 3.0, 4.0], 2)
    [1.5, 2.5, 3.5]
    """
    return [sum(values[i - window + 1 : i + 1]) / window for i in range(window - 1, len(values))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tolerance", type=float, default=0.02, help="largest allowed relative difference of the averaged curves")
    ap.add_argument("--window", type=int, default=10, help="moving-average window (steps) for the curve comparison")
    ap.add_argument("--precision", choices=("bf16", "fp8"), default="bf16", help="the fused run's precision (fp8: e4m3 base weights)")
    ap.add_argument("--memory", choices=("auto", "none", "checkpoint", "offload"), default="auto",
                    help="the fused run's memory policy (offload: every layer is rebuilt in backward)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out / "model")
    plain = plain_losses(model_dir, args.out, args.steps, args.lr)
    fused, fused_path = train_losses(run_config(model_dir, args.out, "auto", args.steps, args.lr, args.precision, args.memory))
    paths = {"plain": "plain", "auto": fused_path}
    diffs = [abs(f - p) / abs(p) for p, f in zip(plain, fused)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    smooth_p, smooth_f = moving_average(plain, args.window), moving_average(fused, args.window)
    curve_diff = max(abs(f - p) / abs(p) for p, f in zip(smooth_p, smooth_f))
    summary = {
        "steps": len(diffs), "shape": REAL_SHAPE, "paths": paths, "lr": args.lr, "precision": args.precision, "memory": args.memory,
        "max_rel_diff": round(diffs[worst], 5), "at_step": worst + 1,
        "steps_over_1pct": sum(d > 0.01 for d in diffs), "steps_over_2pct": sum(d > 0.02 for d in diffs),
        f"max_rel_diff_{args.window}_step_average": round(curve_diff, 5),
        "mean_rel_diff": round(sum(diffs) / len(diffs), 5),
        "first": [round(plain[0], 4), round(fused[0], 4)], "last": [round(plain[-1], 4), round(fused[-1], 4)],
        "plain": [round(x, 5) for x in plain], "fused": [round(x, 5) for x in fused],
    }
    name = f"parity_{args.precision}_{args.memory}_lr{args.lr:g}"
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(range(1, len(plain) + 1), plain, label="plain (transformers)")
        ax.plot(range(1, len(fused) + 1), fused, label=f"fused ({args.precision}, memory {args.memory})", linestyle="--")
        ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.legend(), ax.set_title("honed train: plain vs fused path")
        fig.tight_layout()
        fig.savefig(args.out / f"{name}.png", dpi=110)
    except ImportError:
        pass
    print(f"{'step':>5} {'plain':>9} {'fused':>9} {'rel diff':>9}")
    for i in sorted({0, 9, 49, 99, 149, len(diffs) - 1, worst} & set(range(len(diffs)))):
        print(f"{i + 1:>5} {plain[i]:>9.4f} {fused[i]:>9.4f} {diffs[i]:>9.2%}")
    took_fused = paths["auto"].startswith("fused")
    ok = curve_diff <= args.tolerance and took_fused
    if not took_fused:
        print(f"the auto run took the {paths['auto']!r} path, not the fused one: nothing was compared (is this a CUDA GPU?)")
    print(f"PARITY {'ok' if ok else 'FAILED'}: {args.window}-step averaged curves differ by at most {curve_diff:.2%} "
          f"(tolerance {args.tolerance:.0%}); step by step at most {diffs[worst]:.2%} (step {worst + 1}), mean {summary['mean_rel_diff']:.2%}, "
          f"{summary['steps_over_2pct']} of {len(diffs)} steps over 2%; lr {args.lr:g}; fused {args.precision}, memory {args.memory}; paths {paths}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
