"""Over- and under-fitting from a training run's metrics.jsonl.

The verdict reads the validation curve, never the training loss alone: a training loss that is
still falling says nothing about fit without validation data.

- over-fitting: the validation loss passed its minimum and has risen for `patience` evaluations
  (by more than `rise_tolerance` of the minimum) while the training loss kept falling; the best
  checkpoint is the minimum. A validation loss far above the training loss at the end (the gap
  more than `gap_tolerance` of the validation loss) is flagged as memorising too.
- diverging: validation and training loss rose together (learning rate too high).
- under-fitting: the validation minimum is the last evaluation and it was still falling by more
  than `still_falling` per evaluation, with a small train/validation gap: more steps would help.
- good fit: otherwise (the validation curve flattened near its minimum).
- no validation data: cannot tell.

>>> rows = [{"kind": "train", "step": s, "loss": 3 - s / 10} for s in range(1, 21)]
>>> rows += [{"kind": "eval", "step": s, "loss": v} for s, v in [(5, 2.0), (10, 1.5), (15, 1.7), (20, 1.9)]]
>>> f = analyse_fitting(rows, patience=2)
>>> f["diagnosis"], f["best_step"], f["rising_since_step"]
('overfitting', 10, 10)
"""

from __future__ import annotations

from pathlib import Path

from honed.train.metrics_log import read_metrics

DIAGNOSES = ("no_metrics", "no_validation", "overfitting", "diverging", "underfitting", "good_fit")


def _train_loss_near(train: list[tuple[int, float]], step: int, window: int = 5) -> float | None:
    # Per-step training loss is noisy; the mean of the last few steps up to `step` is what falls or not.
    before = [loss for s, loss in train if s <= step][-window:]
    return sum(before) / len(before) if before else None


def analyse_fitting(rows: list[dict], patience: int = 3, *, rise_tolerance: float = 0.01, still_falling: float = 0.02,
                    gap_tolerance: float = 0.5) -> dict:
    """Curves, best step, the train/validation gap and a verdict from metrics rows.

    Returns a dict with `train` and `validation` as [[step, loss], ...], `best_step`,
    `best_validation_loss`, `gap` (final validation minus final training loss), `diagnosis` (one of
    DIAGNOSES), the flags `overfitting` and `underfitting`, `rising_since_step` (the validation
    minimum's step when the curve rose after it) and `verdict` (one readable sentence).
    """
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("kind") == "eval" and "loss" in r]
    out = {"train": [list(p) for p in train], "validation": [list(p) for p in val], "patience": patience,
           "best_step": None, "best_validation_loss": None, "gap": None, "rising_since_step": None}
    out["diagnosis"] = _diagnose(train, val, out, patience, rise_tolerance, still_falling, gap_tolerance)
    out["overfitting"] = out["diagnosis"] == "overfitting"
    out["underfitting"] = out["diagnosis"] == "underfitting"
    out["verdict"] = _verdict(out)
    return out


def _diagnose(train, val, out, patience, rise_tolerance, still_falling, gap_tolerance) -> str:
    if not train:
        return "no_metrics"
    if not val:
        return "no_validation"
    best_index = min(range(len(val)), key=lambda i: (val[i][1], val[i][0]))
    best_step, best = val[best_index]
    out["best_step"], out["best_validation_loss"] = best_step, best
    final_val, final_train = val[-1][1], _train_loss_near(train, val[-1][0])
    out["gap"] = final_val - final_train if final_train is not None else None
    evaluations_after_best = len(val) - 1 - best_index
    if evaluations_after_best >= patience and final_val > best * (1 + rise_tolerance):
        out["rising_since_step"] = best_step
        train_at_best, train_at_end = _train_loss_near(train, best_step), final_train
        if train_at_best is not None and train_at_end is not None and train_at_end > train_at_best:
            return "diverging"
        return "overfitting"
    if out["gap"] is not None and final_val > 0 and out["gap"] / final_val > gap_tolerance:
        return "overfitting"  # memorising: training loss far below a validation loss that no longer improves
    if best_index == len(val) - 1 and len(val) >= 2:
        previous = val[-2][1]
        if previous > 0 and (previous - best) / previous > still_falling:
            return "underfitting"
    return "good_fit"


def _verdict(f: dict) -> str:
    diagnosis = f["diagnosis"]
    if diagnosis == "no_metrics":
        return "no training metrics found"
    if diagnosis == "no_validation":
        return ("no validation data: cannot tell over- or under-fitting from the training loss alone; "
                "set data.validation or data.val_ratio when training")
    if diagnosis == "diverging":
        return (f"diverging: validation and training loss both rose after step {f['best_step']}; "
                "lower the learning rate, and use the best checkpoint")
    if diagnosis == "overfitting" and f["rising_since_step"] is not None:
        return (f"over-fitting: validation loss rose for {f['patience']}+ evaluations after its minimum at step "
                f"{f['best_step']} while training loss fell; use the best checkpoint (step {f['best_step']}) "
                "or train fewer epochs / with a lower learning rate")
    if diagnosis == "overfitting":
        # The minimum can be the last evaluation (the validation loss still falls, slowly): then there is no
        # earlier checkpoint to prefer.
        last_step = f["validation"][-1][0] if f["validation"] else None
        remedy = "more data" if f["best_step"] == last_step else f"the best checkpoint (step {f['best_step']}), more data"
        return (f"over-fitting (memorising): final validation loss is {f['gap']:.3f} above the training loss; "
                f"use {remedy}, fewer epochs or a lower learning rate")
    if diagnosis == "underfitting":
        return (f"under-fitting: validation loss was still falling at the last evaluation (step {f['best_step']}) "
                "with a small train/validation gap; train longer or raise the learning rate")
    return f"good fit: validation loss flattened at its minimum {f['best_validation_loss']:.4f} (step {f['best_step']})"


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
