"""`honed train CONFIG --nproc-per-node N`: start torchrun's own launcher on `python -m honed train`.

Nothing here launches processes by hand: torch.distributed.run (torchrun's code) starts the workers,
does the rendezvous and watches them; this module only builds its arguments and turns a failed
worker into a HonedError that names the rank and the cause.

>>> launch(["train", "run.yaml"], nproc_per_node=2)                       # doctest: +SKIP
>>> launch(["train", "run.yaml"], nproc_per_node=8, nnodes="2", node_rank=0,
...        rdzv_endpoint="node0.example:29400")                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import socket

from honed.errors import HonedError

INTERRUPTED = 130  # what an interrupted run exits with (a checkpoint was saved): as for one process


class LaunchError(HonedError):
    """A worker of a distributed run failed; the message names the rank and the cause."""


def torchrun_args(honed_args: list[str], *, nproc_per_node: int, nnodes: str = "1", node_rank: int = 0,
                  rdzv_endpoint: str | None = None, rdzv_backend: str = "c10d", rdzv_id: str | None = None) -> list[str]:
    """torchrun's command line for `python -m honed HONED_ARGS` (one host: a standalone rendezvous on a free port)."""
    args = ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes), "--max-restarts", "0"]
    if rdzv_endpoint:
        args += ["--node-rank", str(node_rank), "--rdzv-backend", rdzv_backend, "--rdzv-endpoint", rdzv_endpoint,
                 "--rdzv-id", rdzv_id or "honed"]
    elif str(nnodes) == "1":
        args.append("--standalone")
    else:
        raise LaunchError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the same on every host) so the hosts can meet")
    return [*args, "--module", "honed", *honed_args]


def launch(honed_args: list[str], **kwargs) -> int:
    """Run `honed HONED_ARGS` in torchrun's workers; 0 on success, INTERRUPTED when the workers stopped
    on a signal after saving a checkpoint; otherwise LaunchError."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(torchrun_args(honed_args, **kwargs))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its warning
    try:
        run(args)
    except ChildFailedError as err:
        failures = err.failures
        # Interrupted ranks exit together after saving; the launcher may SIGTERM the last ones while they exit.
        codes = {f.exitcode for f in failures.values()}
        if INTERRUPTED in codes and codes <= {INTERRUPTED, -signal.SIGTERM}:
            return INTERRUPTED
        raise LaunchError(describe_failures(failures)) from None
    except SignalException:  # Ctrl-C / SIGTERM to this launcher: torchrun passed it on to the workers, which saved
        return INTERRUPTED
    return 0


def describe_failures(failures: dict) -> str:
    """'rank 1 (local rank 1 on HOST): killed by SIGKILL (exit code -9)' for each rank that failed by
    itself; ranks the launcher then stopped (SIGTERM) are named after them."""
    host = socket.gethostname()  # each host's launcher reports the workers it started
    stopped = {r for r, f in failures.items() if f.exitcode == -signal.SIGTERM}
    causes = sorted(set(failures) - stopped) or sorted(failures)
    text = "; ".join(f"rank {r} (local rank {failures[r].local_rank} on {host}): {failure_cause(failures[r])}" for r in causes)
    others = sorted(stopped - set(causes))
    if others:
        text += f"; then stopped: rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
    return f"distributed run failed: {text}. See each rank's log above"


def failure_cause(failure) -> str:
    """What ended one worker: the signal that killed it, or the error it recorded, or its exit code."""
    if failure.exitcode < 0:
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = f"signal {-failure.exitcode}"
        return f"killed by {name} (exit code {failure.exitcode})"
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", json.dumps(message))
    if not message or message.startswith("To enable traceback"):
        return f"exit code {failure.exitcode}"
    return f"exit code {failure.exitcode}: {message.strip().splitlines()[-1]}"
