"""One torchrun worker of benchmarks/scaling.py's honed runs: `honed train` as its CLI runs it, plus a record.

    torchrun --nproc-per-node N benchmarks/scaling_rank.py --record-dir DIR --warmup W train CONFIG --no-progress

is `torchrun --nproc-per-node N -m honed train CONFIG --no-progress` (the same `honed.cli.main`, the
same argument parsing, the same training loop) with one addition: every optimizer step, the loop's
own `log_step` is followed by a note of that step's seconds on this rank, the step's tokens (summed
over all ranks by honed), its loss and this GPU's peak allocated memory so far. The peak counter is
reset after the W warm-up steps (as `honed bench` does), so loading and quantizing the model do not
count, and it is read before the final save, so gathering weights for model.safetensors does not
either. At exit each rank writes DIR/rank-R.json; scaling_report.summarise_ranks reads them.

Why not `honed bench`: it builds one process's run (`bench.run.build_bench_run`) without torchrun's
process group or the DDP/FSDP wrapping, so under torchrun each worker would time a separate
single-GPU run. Why not `honed train --nproc-per-node N`: it starts torchrun on `-m honed`, which
leaves no place for the per-rank record.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def _peak_gib() -> tuple[float | None, float | None]:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None, None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3), round(torch.cuda.max_memory_reserved() / 2**30, 3)


def record_steps(steps: list[dict], warmup: int) -> None:
    """Wrap honed.train.sft.log_step so each step also lands in `steps` (the loop looks it up at each
    call); the peak-memory counter starts again after `warmup` steps."""
    import torch

    import honed.train.sft as sft

    original = sft.log_step

    def log_step(run, step, loss, seconds, result, progress):
        original(run, step, loss, seconds, result, progress)
        alloc, reserved = _peak_gib()
        steps.append({"step": run.state.step, "seconds": seconds, "tokens": int(step.tokens), "loss": float(loss),
                      "peak_alloc_gib": alloc, "peak_reserved_gib": reserved})
        if len(steps) == warmup and alloc is not None:
            torch.cuda.reset_peak_memory_stats()

    sft.log_step = log_step


def write_record(record_dir: str, record: dict) -> None:
    out = Path(record_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".rank")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, out / f"rank-{record['rank']}.json")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--record-dir" or argv[2] != "--warmup":
        print("usage: scaling_rank.py --record-dir DIR --warmup W train CONFIG [honed train flags]", file=sys.stderr)
        return 2
    record_dir, warmup, honed_args = argv[1], int(argv[3]), argv[4:]
    steps: list[dict] = []
    record_steps(steps, warmup)
    from honed.cli import main as honed_main

    rc = 1
    try:
        rc = honed_main(honed_args)
    finally:
        last = steps[-1] if steps else {}
        write_record(record_dir, {"rank": int(os.environ.get("RANK", 0)), "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
                                  "world_size": int(os.environ.get("WORLD_SIZE", 1)), "rc": rc, "steps": steps,
                                  "peak_alloc_gib": last.get("peak_alloc_gib"), "peak_reserved_gib": last.get("peak_reserved_gib")})
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
