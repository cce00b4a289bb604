"""The pieces of a distributed run that need no process group: shares, the global batch on resume,
torchrun's arguments, failure messages, the strategy choice."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

from honed.errors import ConfigError
from honed.train.distributed import DistContext, accumulation_for, rank_share, sharded_scorer
from honed.train.launch import LaunchError, describe_failures, torchrun_args


def test_each_rank_takes_every_world_size_th_micro_batch_and_single_process_takes_all():
    group = list("abcde")
    assert [rank_share(DistContext(rank=r, world_size=2, backend="gloo"), group) for r in (0, 1)] == [list("ace"), list("bd")]
    assert rank_share(DistContext(rank=3, world_size=4, backend="gloo"), list("abc")) == []  # idle at an epoch's end
    assert rank_share(DistContext(), group) == group
    assert sharded_scorer(DistContext(), len) is len


def test_resume_on_another_world_size_keeps_the_global_micro_batches_per_step(caplog):
    two = DistContext(rank=0, world_size=2, backend="gloo")
    assert accumulation_for(two, 3, None) == 3  # fresh run: the config's value
    assert accumulation_for(two, 3, 6) == 3  # same global batch
    assert accumulation_for(two, 1, 8) == 4
    assert accumulation_for(DistContext(), 2, 4) == 4  # a 2-rank checkpoint (2 × 2) resumed by one process
    assert "gradient_accumulation_steps 2 → 4" in caplog.text
    with pytest.raises(ConfigError, match="6 micro-batches per optimizer step, which 4 processes cannot share"):
        accumulation_for(DistContext(rank=0, world_size=4, backend="gloo"), 1, 6)


def test_torchrun_arguments_for_one_host_and_for_several():
    assert torchrun_args(["train", "c.yaml"], nproc_per_node=2) == [
        "--nproc-per-node", "2", "--nnodes", "1", "--max-restarts", "0", "--standalone", "--module", "honed", "train", "c.yaml"]
    args = torchrun_args(["train", "c.yaml"], nproc_per_node=8, nnodes="2", node_rank=1, rdzv_endpoint="h0:29400")
    assert args[args.index("--node-rank") + 1] == "1" and args[args.index("--rdzv-endpoint") + 1] == "h0:29400"
    assert args[args.index("--rdzv-backend") + 1] == "c10d" and "--standalone" not in args
    with pytest.raises(LaunchError, match="--nnodes 2 needs --rdzv-endpoint"):
        torchrun_args(["train", "c.yaml"], nproc_per_node=1, nnodes="2")


def test_failure_message_names_the_rank_that_failed_first_and_the_ones_stopped_after_it():
    killed = SimpleNamespace(exitcode=-signal.SIGKILL, local_rank=1, message="Signal 9 (SIGKILL) received by PID 7")
    stopped = SimpleNamespace(exitcode=-signal.SIGTERM, local_rank=0, message="")
    text = describe_failures({0: stopped, 1: killed})
    assert text.startswith("distributed run failed: rank 1 (local rank 1 on ")
    assert "): killed by SIGKILL (exit code -9); then stopped: rank 0." in text
    error = SimpleNamespace(exitcode=2, local_rank=0, message={"message": "ConfigError: data.train: no such file x.jsonl",
                                                                "extraInfo": {}})
    assert "rank 0 (local rank 0 on " in describe_failures({0: error})
    assert "): exit code 2: ConfigError: data.train: no such file x.jsonl." in describe_failures({0: error})


def test_strategy_auto_is_ddp_on_the_cpu_and_none_without_torchrun():
    from honed.train.sharding import choose_strategy, training_bytes

    cfg = SimpleNamespace(distributed=SimpleNamespace(strategy="auto"), method="lora")
    model = torch.nn.Linear(4, 4)
    assert choose_strategy(cfg, DistContext(), torch.device("cpu"), model) is None
    assert choose_strategy(cfg, DistContext(world_size=2, backend="gloo"), torch.device("cpu"), model) == "ddp"
    # full fine-tuning: 20 parameters × 16 bytes (fp32 weights, gradients, two AdamW moments)
    assert training_bytes(model, "full") == 320
    model.weight.requires_grad_(False)
    assert training_bytes(model, "lora") == 20 * 4 + 4 * 16  # all weights + the trainable bias's state
