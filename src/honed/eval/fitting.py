"""Over- and under-fitting from a training run's metrics.jsonl.

Over-fitting shows as validation loss rising for several evaluations in a row while training
loss keeps falling; the best checkpoint is the evaluation with the lowest validation loss.
Under-fitting shows as training loss still falling steeply at the end with no validation rise.

>>> rows = [{"kind": "train", "step": s, "loss": 3 - s / 10} for s in range(1, 21)]
>>> rows += [{"kind": "eval", "step": s, "loss": v} for s, v in [(5, 2.0), (10, 1.5), (15, 1.7), (20, 1.9)]]
>>> f = analyse_fitting(rows, patience=2)
>>> f["overfitting"], f["best_step"], f["rising_since_step"]
(True, 10, 10)
"""

from __future__ import annotations

from pathlib import Path

from honed.train.metrics_log import read_metrics


def _train_loss_near(train: list[tuple[int, float]], step: int, window: int = 5) -> float | None:
    # Per-step training loss is noisy; the mean of the last few steps up to `step` is what falls or not.
    before = [loss for s, loss in train if s <= step][-window:]
    return sum(before) / len(before) if before else None


def analyse_fitting(rows: list[dict], patience: int = 3) -> dict:
    """Curves, best step and an over-/under-fitting verdict from metrics rows.

    Returns a dict with `train` and `validation` as [[step, loss], ...], `best_step`,
    `best_validation_loss`, `overfitting` (bool), `rising_since_step` (the best step before the
    rise, or None), `underfitting` (bool) and `verdict` (one readable sentence).
    """
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("kind") == "eval" and "loss" in r]
    out = {"train": [list(p) for p in train], "validation": [list(p) for p in val], "patience": patience,
           "best_step": None, "best_validation_loss": None, "overfitting": False,
           "rising_since_step": None, "underfitting": False}
    if val:
        best_step, best = min(val, key=lambda p: (p[1], p[0]))
        out["best_step"], out["best_validation_loss"] = best_step, best
        rises = 0
        for (step_a, loss_a), (step_b, loss_b) in zip(val, val[1:]):
            before, after = _train_loss_near(train, step_a), _train_loss_near(train, step_b)
            train_falls = before is not None and after is not None and after < before
            rises = rises + 1 if loss_b > loss_a and train_falls else 0
            if rises >= patience:
                out["overfitting"] = True
                out["rising_since_step"] = val[val.index((step_b, loss_b)) - rises][0]
    if len(train) >= 10 and not out["overfitting"]:
        # Still dropping by more than 10% over the last fifth of training: more steps would help.
        tail = train[-max(2, len(train) // 5):]
        start = sum(loss for _, loss in tail[:2]) / 2
        end = sum(loss for _, loss in tail[-2:]) / 2
        out["underfitting"] = start > 0 and (start - end) / start > 0.10
    out["verdict"] = _verdict(out)
    return out


def _verdict(f: dict) -> str:
    if not f["train"]:
        return "no training metrics found"
    if f["overfitting"]:
        return (f"over-fitting: validation loss rose for {f['patience']}+ evaluations after step "
                f"{f['rising_since_step']} while training loss fell; use the best checkpoint (step {f['best_step']}) "
                "or train fewer epochs / with a lower learning rate")
    if f["underfitting"]:
        return "under-fitting: training loss was still falling steeply at the end; train longer or raise the learning rate"
    if not f["validation"]:
        return "no validation metrics: set data.validation or data.val_ratio when training to see over-fitting"
    return f"no over-fitting detected; best validation loss {f['best_validation_loss']:.4f} at step {f['best_step']}"


def run_fitting(run_dir: str | Path, patience: int = 3) -> dict | None:
    """`analyse_fitting` of a `honed train` output folder, with the best weights' folder named."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    result = analyse_fitting(read_metrics(path), patience)
    result["run_dir"] = str(run_dir)
    best_dir = Path(run_dir) / "best"
    result["best_checkpoint"] = str(best_dir) if best_dir.is_dir() else None
    return result
