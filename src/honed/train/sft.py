"""Supervised fine-tuning (and every other `objective:`), top to bottom: set-up → loop → save.

The parts live in `honed.train.recipe` (set-up, one optimizer step, evaluation, checkpoint); this
module is the loop a reader follows. One optimizer step = `gradient_accumulation_steps`
micro-batches, weighted by the objective (trained tokens for SFT). Under torchrun every process runs
this same loop over its share of each step's micro-batches (`honed.train.distributed`); rank 0
alone writes outputs and shows progress.

>>> result = train(load_config("configs/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from honed.config import TrainConfig
from honed.train.scoring import score_samples
from honed.errors import HonedError
from honed.train.metrics_log import read_metrics
from honed.train.outputs import plot_losses, write_run_record
from honed.train.defaults import resolve_data_defaults
from honed.train.distributed import any_rank, barrier, launched_by_torchrun, sharded_scorer
from honed.train.progress import TrainProgress
from honed.train.recipe import (
    StepResult,
    TrainingRun,
    checkpoint_is_current,
    epoch_batches,
    evaluate,
    local_micro_batches,
    save_checkpoint,
    save_weights,
    setup_run,
    train_step,
    training_model_config,  # noqa: F401  (public: tests and callers import it from here)
)

log = logging.getLogger(__name__)


class TrainingInterrupted(HonedError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # train loss at every optimizer step
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    last_checkpoint: Path | None = None


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (a checkpoint is then saved)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        # A second Ctrl-C stops now; not under torchrun, whose agent passes the terminal's Ctrl-C on to
        # its workers (each gets it twice) and kills them itself if they take too long.
        if self.received is not None and not launched_by_torchrun():
            raise KeyboardInterrupt
        self.received = signum
        log.warning("signal %s received: finishing this step, saving a checkpoint, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, *, stop_after_steps: int | None = None, show_progress: bool = True) -> TrainResult:
    """Train as configured. `stop_after_steps` saves a checkpoint and stops early (as SIGTERM would)."""
    started = time.time()
    cfg = resolve_data_defaults(cfg)  # `auto` learning rate, epochs, rank, validation share from the data's size
    run = setup_run(cfg)
    t, state, schedule = cfg.training, run.state, run.schedule
    result = TrainResult(output_dir=run.output_dir, steps=state.step, best_step=state.best_step)
    progress = TrainProgress(schedule.total_steps, enabled=show_progress and run.dist.is_main, start=state.step)
    device = run.settings.device
    with contextlib.closing(run.metrics), _StopSignal() as stop, progress:
        while state.step < schedule.total_steps and not result.stopped_early:
            samples, batches = epoch_batches(run, state.epoch)  # the same global plan on every process
            while state.batch_in_epoch < len(batches) and state.step < schedule.total_steps:
                group = batches[state.batch_in_epoch : state.batch_in_epoch + run.micro_per_step]
                step_start = time.perf_counter()
                micro_batches, idle = local_micro_batches(run, samples, group)
                step = train_step(run, micro_batches, idle=idle)
                loss = step.loss  # waits for the GPU: the time below is the step's
                seconds = time.perf_counter() - step_start
                state.step, state.batch_in_epoch, state.tokens_seen = state.step + 1, state.batch_in_epoch + len(group), state.tokens_seen + step.tokens
                log_step(run, step, loss, seconds, result, progress)
                last = state.step == schedule.total_steps
                if run.data.val and (state.step % schedule.eval_every == 0 or last):
                    evaluate_and_keep_best(run, result, progress)
                if t.early_stopping_patience and state.evals_without_improvement >= t.early_stopping_patience:
                    progress.note(f"early stop: no validation improvement in {t.early_stopping_patience} evaluations (best step {state.best_step})")
                    result.stopped_early = True
                    break
                if state.step % schedule.save_every == 0 or last:
                    result.last_checkpoint = save_checkpoint(run)
                signalled = any_rank(run.dist, stop.received is not None, device)  # a signal to any process stops all at this step
                if signalled or (stop_after_steps is not None and state.step >= stop_after_steps):
                    return stop_with_checkpoint(run, result, signalled=signalled)
            if not result.stopped_early and state.batch_in_epoch >= len(batches):
                end_epoch(run)
    finish_run(run, started)
    result.steps = state.step
    return result


def log_step(run: TrainingRun, step: StepResult, loss: float, seconds: float, result: TrainResult, progress: TrainProgress) -> None:
    """The step's loss into the result, the progress bar and (every logging_steps) metrics.jsonl."""
    state = run.state
    tokens_per_s = step.tokens / seconds
    result.losses.append(loss)
    progress.update(state.step, loss=loss, lr=step.lr, tokens_per_s=tokens_per_s)
    if state.step % run.cfg.training.logging_steps == 0 or state.step == run.schedule.total_steps:
        metrics = getattr(run.objective, "step_metrics", dict)(step.metrics)  # preference: sums → means per pair
        run.metrics.write("train", state.step, loss=loss, lr=step.lr, grad_norm=float(step.grad_norm), tokens_per_s=tokens_per_s,
                          epoch=state.epoch, **metrics)


def evaluate_and_keep_best(run: TrainingRun, result: TrainResult, progress: TrainProgress) -> None:
    """Validation loss (and a preference objective's rewards, margin and accuracy) now; the best weights
    so far go to OUTPUT/best, and patience counts the rest."""
    state = run.state
    sums: dict[str, float] = {}
    val_loss = evaluate(run, metrics=sums)
    result.val_losses.append((state.step, val_loss))
    run.metrics.write("eval", state.step, loss=val_loss, **getattr(run.objective, "step_metrics", dict)(sums))
    progress.note(f"step {state.step}: validation loss {val_loss:.4f}")
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, state.step, 0
        if run.cfg.training.save_best:
            save_weights(run, run.output_dir / "best")
        result.best_step = state.step
    else:
        state.evals_without_improvement += 1


def stop_with_checkpoint(run: TrainingRun, result: TrainResult, *, signalled: bool) -> TrainResult:
    """A checkpoint of this step (unless one was just saved), then stop: raise after a signal."""
    if not checkpoint_is_current(run):
        save_checkpoint(run)
    result.last_checkpoint = run.last_checkpoint
    result.steps, result.interrupted = run.state.step, True
    if signalled:
        raise TrainingInterrupted(f"stopped at step {run.state.step}; checkpoint saved to {run.last_checkpoint}. Resume with training.resume=true")
    return result


def end_epoch(run: TrainingRun) -> None:
    """Let the epoch strategy learn from the finished epoch (hard mining scores it), then the next."""
    state = run.state
    scorer = functools.partial(score_samples, run.model, device=run.settings.device, pad_id=run.tokenizer.pad_token_id, precision=run.settings.precision)
    # Every process must learn the same scores: each scores its share and they are gathered; under
    # FSDP each forward is collective, so every process scores all of them.
    run.data.epochs.end_epoch(state.epoch, scorer if run.strategy == "fsdp" else sharded_scorer(run.dist, scorer))
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def finish_run(run: TrainingRun, started: float) -> None:
    """The final weights, run_info.json (what the path did included) and the loss curve (rank 0)."""
    save_weights(run, run.output_dir)
    if not run.dist.is_main:
        barrier(run.dist)
        return
    info = dict(run.info)
    info.update(path_record(run.path))
    write_run_record(run.output_dir, run.cfg, fingerprint=run.fingerprint, info=info, report=run.data.report.to_dict(), started=started)
    plot_losses(read_metrics(run.output_dir / "metrics.jsonl"), run.output_dir / "loss_curve.png")
    barrier(run.dist)


def path_record(path) -> dict:
    """What the training path did, for run_info.json (beside `training_path`): its own summary, the
    keys it has a value for (the fused path: memory_plan as it ended, embeddings_on_host, cuda_graphs)."""
    record = {k: v for k, v in path.describe().items() if k != "name" and v is not None}
    if "cuda_graphs" in record:
        log.info("CUDA graphs: %(captures)d captured, %(replays)d replays, %(eager_runs)d micro-batches eager, %(capture_s).1f s capturing", record["cuda_graphs"])
    return record
