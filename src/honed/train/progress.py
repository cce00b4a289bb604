"""A progress bar for training (step, loss, lr, tokens/s, ETA), plain log lines when not on a terminal."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("honed.train")


class TrainProgress:
    def __init__(self, total: int, *, enabled: bool = True, start: int = 0):
        self.total, self.start, self.enabled = total, start, enabled
        self._bar = None
        self._task = None
        self._every = max(1, total // 20)  # ~20 log lines per run when there is no live bar

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, loss=float("nan"), lr=0.0, tps=0.0)
        return self

    def update(self, step: int, *, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr, tps=tokens_per_s)
        elif self.enabled and (step % self._every == 0 or step == self.total):
            log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", step, self.total, loss, lr, tokens_per_s)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.log(message)
        elif self.enabled:
            log.info(message)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
