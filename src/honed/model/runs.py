"""Where a training run keeps its checkpoints: `OUTPUT/checkpoints/checkpoint-NNNNNN/`.

Read by training (resume, pruning) and by everything that takes a run folder as a model.

>>> checkpoint_step("runs/x/checkpoints/checkpoint-000120")
120
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int:
    """The optimizer step a `checkpoint-NNNNNN` folder was saved at."""
    return int(_NAME.match(Path(path).name).group(1))


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]
