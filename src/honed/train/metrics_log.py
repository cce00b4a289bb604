"""Training metrics to a JSONL file (one object per event) and, when available, TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from honed.utils.fs import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only: a resumed run continues the same file, dropping rows past the resume step."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, resume_step: int = 0):
        self.path = Path(out_dir) / "metrics.jsonl"
        if self.path.exists():
            # Keep rows up to the step training continues from; a line cut short by a killed
            # process does not parse and goes too.
            kept = [line for line in self.path.read_text().splitlines() if (row := _parse(line)) and row.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._closed = False
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, kind: str, step: int, **values) -> None:
        self._fh.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


class NullMetrics:
    """What processes other than rank 0 log metrics to under torchrun: nothing (rank 0 writes them)."""

    def write(self, kind: str, step: int, **values) -> None:
        pass

    def close(self) -> None:
        pass


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
