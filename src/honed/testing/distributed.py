"""Run `honed.train.sft.train` in several local processes, as torchrun would (CPU, gloo): for tests.

Each process gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and one
thread, then trains the same config. Used where a test needs the Python API's `stop_after_steps`
under several ranks; the command line path is tested through torchrun itself.

>>> spawn_training(raw_config, world_size=2, stop_after_steps=2)   # doctest: +SKIP
"""

from __future__ import annotations

import os

from honed.testing.fsdp_worker import free_port


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
            setup=None) -> None:
    import torch

    torch.set_num_threads(1)
    if record_loads:
        _count_model_loads(record_loads, rank)
    if setup is not None:
        setup(rank)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from honed.config import config_from_dict
    from honed.train.sft import train

    try:
        train(config_from_dict(raw), stop_after_steps=stop_after_steps, show_progress=False)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_training(raw: dict, *, world_size: int, stop_after_steps: int | None = None, record_loads: str | None = None,
                   setup=None) -> None:
    """Train the config `raw` (a dict, as config_from_dict takes) in `world_size` processes; raises
    if any of them fails. `record_loads`: each rank writes how often it called transformers'
    `AutoModelForCausalLM.from_pretrained` to RECORD_LOADS.RANK. `setup(rank)` (an importable
    function) runs in each process before training (e.g. to inject a fault on one rank)."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world_size, free_port(), raw, stop_after_steps, record_loads, setup), nprocs=world_size, join=True)
