"""Run a function on N CPU ranks (gloo) in spawned processes, and a minimal token-weighted training
loop, for the FSDP2 and sharded-checkpoint tests.

The loop is the reference an FSDP run must match: each rank takes its share of every global batch,
sums the token losses of its share, and divides by the token count of the whole global batch
(all-reduced), so the step is the same as one process over the whole batch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F


def free_port() -> int:
    """A TCP port nobody listens on now. Only for a server this process starts itself at once (the
    port can be taken by another process between this call and the bind); spawned ranks meet at
    `rendezvous_store()`, and a torchrun of one host picks its own port (`--standalone`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def rendezvous_store():
    """The port of a rendezvous store (a torch TCPStore) that this process hosts while the block runs,
    for spawned ranks to join with `rank_environment`.

    Why not a free port that rank 0 binds: between finding the port and rank 0 binding it (seconds
    later, after its imports) any other process on the machine can take it, and the run fails with
    EADDRINUSE. Here the store binds port 0 itself and keeps it until the ranks are done; every rank
    joins it as a client, as torchrun's workers join their agent's store (TORCHELASTIC_USE_AGENT_STORE).
    The product code's own `init_process_group` (env://, with `distributed.timeout_s`) runs unchanged."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        yield store.port
    finally:
        del store  # stops the store's server


def rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """torchrun's environment for `rank`, joining the store `rendezvous_store()` hosts on `port`."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "TORCHELASTIC_USE_AGENT_STORE": "True"}


def _entry(rank: int, world_size: int, port: int, fn, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # the test machine's cores are shared: one thread per rank
    os.environ.update(rank_environment(rank, world_size, port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


# Imported once by the fork server, so that each rank starts without importing them again (seconds each).
_PRELOAD = ["honed.testing.fsdp_worker", "transformers", "peft", "torch.distributed.fsdp", "torch.distributed.checkpoint",
            "honed.train.fsdp", "honed.train.dist_checkpoint", "honed.train.checkpoint", "honed.testing.lora"]


def spawn(fn, world_size: int, *args, **kwargs) -> None:
    """Call `fn(rank, world_size, *args, **kwargs)` in `world_size` new processes joined by a gloo
    process group. `fn` must be importable (a module-level function); a failure on any rank raises here.

    The ranks come from a fork server (a clean single-threaded process that has imported torch and
    transformers once), not from a fork of this process, whose thread pools a fork must not copy.
    """
    import functools
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    with rendezvous_store() as port:
        mp.start_processes(_entry, args=(world_size, port, functools.partial(fn, **kwargs), args), nprocs=world_size,
                           join=True, start_method="forkserver")


def make_batches(vocab: int, *, steps: int, global_batch: int, seq: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`steps` global batches of random ids; each row's answer (the labelled part) has its own length, so
    the ranks' token counts differ and only a token-weighted loss matches one process."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        ids = torch.randint(3, vocab, (global_batch, seq), generator=gen)
        labels = ids.clone()
        for row in range(global_batch):
            start = int(torch.randint(1, seq - 2, (1,), generator=gen))
            labels[row, :start] = -100
        batches.append({"input_ids": ids, "labels": labels})
    return batches


def rank_share(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s contiguous block of rows of a global batch."""
    rows = batch["input_ids"].shape[0] // world_size
    return {k: v[rank * rows:(rank + 1) * rows] for k, v in batch.items()}


def train_step(model, optimizer, batch: dict[str, torch.Tensor], *, world_size: int = 1, device=None) -> float:
    """One optimizer step on this rank's `batch` (moved to `device`, by default the weights'); returns
    the loss of the whole global batch.

    The gradient FSDP2 (or DDP) leaves is the mean over ranks, so each rank's loss is scaled by
    `world_size` to make that mean the gradient of (sum of token losses) / (global token count).
    """
    import torch.distributed as dist

    device = device if device is not None else next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(device)
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    counts = torch.tensor([float((labels != -100).sum()), float(loss_sum.detach())], device=device)
    if world_size > 1:
        dist.all_reduce(counts)
    tokens, total = counts.tolist()
    (loss_sum * world_size / tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / tokens


def gathered_params(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter as a whole CPU tensor (collective under FSDP2: every rank calls it)."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            out[name] = full.detach().cpu().clone()
    return out


def save_result(path: Path, rank: int, result) -> None:
    """Rank 0 writes `result` (tensors, numbers, lists, dicts) to `path`."""
    if rank == 0:
        torch.save(result, path)


# --- Scenarios the tests run, on N ranks (`spawn`) or in one process without a process group ---

def build_model(folder, *, lora: bool = False, checkpointing: bool = False, r: int = 4):
    """The tiny model in `folder`, the same on every rank (fixed seed), in training mode: full
    fine-tuning, or LoRA on every linear layer; optionally with the model's own gradient checkpointing."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)  # peft draws lora_A from the global RNG
    if lora:
        from honed.testing.lora import lora_model

        model = lora_model(folder, r=r, alpha=2 * r)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.train()


def make_optimizer(model):
    """AdamW over the trainable weights and a linear decay, so resuming needs both their states."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    return optimizer, torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.25, total_iters=4)


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state by parameter name, unsharded, on rank 0 (collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    import torch.distributed as dist

    full = dist.is_initialized()
    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=full, cpu_offload=full))
    return {name: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for name, s in state.get("state", {}).items()}


def _prepare(folder, *, lora: bool, checkpointing: bool, shard: bool):
    model = build_model(folder, lora=lora, checkpointing=checkpointing)
    if shard:
        from honed.config import DistributedConfig
        from honed.train.fsdp import apply_fsdp

        apply_fsdp(model, DistributedConfig(), param_dtype=None, reduce_dtype=None)
    return (model, *make_optimizer(model))


def _step(model, optimizer, scheduler, batch, rank, world_size) -> float:
    loss = train_step(model, optimizer, rank_share(batch, rank, world_size), world_size=world_size)
    scheduler.step()
    return loss


def run_and_save(rank: int, world_size: int, folder, batches, ckpt_dir, out, *, lora: bool = False,
                 checkpointing: bool = False, shard: bool = True) -> None:
    """Train on all but the last batch, save a sharded checkpoint (unless ckpt_dir is None), train on
    the last; rank 0 writes the losses, the weights and optimizer state at the save, and the final weights."""
    from honed.train.checkpoint import rng_state
    from honed.train.dist_checkpoint import full_state_dict_for_saving, save_sharded

    model, optimizer, scheduler = _prepare(folder, lora=lora, checkpointing=checkpointing, shard=shard)
    losses = [_step(model, optimizer, scheduler, b, rank, world_size) for b in batches[:-1]]
    at_save = gathered_params(model)
    optim_at_save = full_optimizer_state(model, optimizer)
    if ckpt_dir is not None:
        torch.manual_seed(100 + rank)  # a different random state per rank, to see each one kept
        save_sharded(ckpt_dir, model, optimizer, extra={"step": len(batches) - 1, "data_position": 4 * (len(batches) - 1),
                                                        "scheduler": scheduler.state_dict(), "rng": rng_state()})
    losses.append(_step(model, optimizer, scheduler, batches[-1], rank, world_size))
    export = full_state_dict_for_saving(model, trainable_only=lora)
    assert rank == 0 or export == {}, f"rank {rank} got a full state dict"
    save_result(out, rank, {"losses": losses, "at_save": at_save, "optim_at_save": optim_at_save,
                            "final": gathered_params(model), "export": export})


def resume_and_step(rank: int, world_size: int, folder, batch, ckpt_dir, out, *, lora: bool = False,
                    checkpointing: bool = False, shard: bool = True) -> None:
    """Load the checkpoint into a fresh model (sharded over `world_size` ranks, or whole), then train on
    `batch`; rank 0 writes the loaded weights and optimizer state, `extra`, the loss and the final weights."""
    from honed.train.dist_checkpoint import load_sharded

    model, optimizer, scheduler = _prepare(folder, lora=lora, checkpointing=checkpointing, shard=shard)
    extra = load_sharded(ckpt_dir, model, optimizer)
    scheduler.load_state_dict(extra["scheduler"])
    loaded, optim_loaded = gathered_params(model), full_optimizer_state(model, optimizer)
    loss = _step(model, optimizer, scheduler, batch, rank, world_size)
    save_result(out, rank, {"loaded": loaded, "optim_loaded": optim_loaded, "extra": extra, "loss": loss,
                            "final": gathered_params(model)})
