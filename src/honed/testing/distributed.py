"""Run `honed.train.sft.train` in several local processes, as torchrun would (CPU, gloo): for tests.

Each process gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and one
thread, then trains the same config. Used where a test needs the Python API's `stop_after_steps`
under several ranks; the command line path is tested through torchrun itself.

>>> spawn_training(raw_config, world_size=2, stop_after_steps=2)   # doctest: +SKIP
"""

from __future__ import annotations

import os

from honed.testing.fsdp_worker import rank_environment, rendezvous_store


def _count_model_loads(record: str, rank: int) -> None:
    """Count this rank's calls of transformers' model loader into `record`.RANK (rewritten at each call)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    loader, calls = AutoModelForCausalLM.from_pretrained, []

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        Path(f"{record}.{rank}").write_text(str(len(calls)))
        return loader(*args, **kwargs)

    Path(f"{record}.{rank}").write_text("0")
    AutoModelForCausalLM.from_pretrained = counting


def _worker(rank: int, world_size: int, port: int, raw: dict, stop_after_steps: int | None, record_loads: str | None = None,
            setup=None, errors_to: str | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if record_loads:
        _count_model_loads(record_loads, rank)
    if setup is not None:
        setup(rank)
    os.environ.update(rank_environment(rank, world_size, port))
    from honed.config import config_from_dict
    from honed.train.sft import train

    try:
        train(config_from_dict(raw), stop_after_steps=stop_after_steps, show_progress=False)
    except BaseException as err:
        if errors_to:  # what ended this rank, for the test to read (the spawner reports only the first failure)
            from pathlib import Path

            Path(f"{errors_to}.{rank}").write_text(f"{type(err).__name__}: {err}")
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_training(raw: dict, *, world_size: int, stop_after_steps: int | None = None, record_loads: str | None = None,
                   setup=None, errors_to: str | None = None) -> None:
    """Train the config `raw` (a dict, as config_from_dict takes) in `world_size` processes; raises
    if any of them fails. `record_loads`: each rank writes how often it called transformers'
    `AutoModelForCausalLM.from_pretrained` to RECORD_LOADS.RANK. `setup(rank)` (an importable
    function) runs in each process before training (e.g. to inject a fault on one rank). `errors_to`:
    a rank that fails writes "ErrorType: message" to ERRORS_TO.RANK."""
    import torch.multiprocessing as mp

    with rendezvous_store() as port:  # not a free port that rank 0 binds later: another process may take it first
        mp.spawn(_worker, args=(world_size, port, raw, stop_after_steps, record_loads, setup, errors_to), nprocs=world_size, join=True)


def fake_out_of_memory(rank: int, *, on_rank: int, at_call: int, record: str, in_backward: bool = False,
                       recoverable: bool = False) -> None:
    """A fault for tests (pass it, with functools.partial, as spawn_training's `setup`): rank `on_rank`
    raises torch.cuda.OutOfMemoryError at its `at_call`-th loss computation on the plain path, in the
    forward (or, `in_backward`, once backward reaches that loss). `recoverable`: the plain path can
    replan after it (as the fused path can), and each rank counts its replans into RECORD.RANK."""
    from pathlib import Path

    import torch

    from honed.engine import PlainPath

    calls, loss_sum = [0], PlainPath.loss_sum

    def out_of_memory(*_):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by a test)")

    def faulty_loss_sum(self, model, batch):
        calls[0] += 1
        if rank == on_rank and calls[0] == at_call and not in_backward:
            out_of_memory()
        loss, weight = loss_sum(self, model, batch)
        if rank == on_rank and calls[0] == at_call:
            loss.register_hook(out_of_memory)
        return loss, weight

    PlainPath.loss_sum = faulty_loss_sum
    Path(f"{record}.{rank}").write_text("0")
    if recoverable:
        replans = []

        def recover_from_oom(self) -> bool:
            replans.append(1)
            Path(f"{record}.{rank}").write_text(str(len(replans)))
            return True

        PlainPath.recover_from_oom = recover_from_oom
