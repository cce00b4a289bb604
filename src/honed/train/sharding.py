"""The strategy of a run under torchrun (`distributed.strategy`), and the parts of a run that differ
under FSDP2: sharding the model, sharded checkpoints, and gathering the weights for the final save.

The sharding itself and Distributed Checkpoint live in `honed.train.fsdp` and
`honed.train.dist_checkpoint`; this module wires them into the recipe's set-up, checkpoint and save.

>>> choose_strategy(cfg, ctx, torch.device("cuda", 0), model)   # doctest: +SKIP
'ddp'
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from honed.errors import ConfigError
from honed.train.distributed import DistContext

log = logging.getLogger(__name__)

# Bytes of device memory per parameter while training, beyond the weights: full fine-tuning holds
# fp32 master weights, their gradients and AdamW's two moments (16 bytes); LoRA holds little more
# than the frozen weights. Activations come on top, hence the 0.8 of the device's memory below.
_FULL_BYTES_PER_PARAM = 16


def training_bytes(model, method: str) -> int:
    """A rough need of device memory to train `model` whole on one device (weights + optimizer state)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if method == "full":
        return sum(p.numel() for p in model.parameters()) * _FULL_BYTES_PER_PARAM
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights + trainable * _FULL_BYTES_PER_PARAM


def choose_strategy(cfg, ctx: DistContext, device: torch.device, model) -> str | None:
    """ddp, fsdp, or None (one process without torchrun). `auto`: DDP while the model and its training
    state fit one device — it is the cheaper one (one all-reduce of the trainable gradients, the
    fused path on every rank) — and FSDP2 once they do not, since sharding is then the only way in."""
    if not ctx.enabled:
        return None
    strategy = cfg.distributed.strategy
    if strategy == "auto":
        strategy = "ddp"
        if device.type == "cuda" and ctx.world_size > 1:
            need, have = training_bytes(model, cfg.method), torch.cuda.get_device_properties(device).total_memory
            if need > 0.8 * have:
                strategy = "fsdp"
            log.info("distributed.strategy auto → %s (training needs ~%.1f GB, one GPU holds %.1f GB)", strategy, need / 1e9, have / 1e9)
    if strategy == "fsdp":
        from honed.train.fsdp import fsdp_unsupported_reason

        reason = fsdp_unsupported_reason(model, cfg)
        if reason:
            raise ConfigError(reason)
    return strategy


def shard_model(model, cfg, precision: str, *, from_rank0: bool = False, device: torch.device | None = None):
    """FSDP2 over `model` (in place): compute in the training precision, reduce gradients in fp32.
    `from_rank0` (see `load_model_for_run`): rank 0's weights fill every rank's shards on `device`."""
    from honed.train.fsdp import apply_fsdp, shard_from_rank0
    from honed.utils.precision import autocast_dtype

    def shard(module):
        return apply_fsdp(module, cfg.distributed, param_dtype=autocast_dtype(precision), reduce_dtype=torch.float32)

    if from_rank0:
        return shard_from_rank0(model, shard, compute_device=device, cpu_offload=cfg.distributed.fsdp_cpu_offload)
    return shard(model)


def prepare_strategy_and_path(cfg, ctx: DistContext, model, settings, from_rank0: bool = False):
    """(strategy, path, model): under torchrun, `distributed.strategy` resolved; the training path
    prepared; FSDP2 applied for strategy fsdp (before the optimizer is built: it must see the shards),
    the shards filled from rank 0's weights when only rank 0 loaded them (`from_rank0`)."""
    from honed.engine import PlainPath
    from honed.train.model_setup import prepare_training_path

    strategy = choose_strategy(cfg, ctx, settings.device, model)
    if strategy == "fsdp":  # FSDP2 gathers each layer's weights in its own hooks; the fused kernels read them directly
        log.info("distributed.strategy fsdp: the plain training path (the fused path runs under ddp)")
    path, model = prepare_training_path(model, settings, PlainPath() if strategy == "fsdp" else None)
    if strategy == "fsdp":
        model = shard_model(model, cfg, settings.precision, from_rank0=from_rank0, device=settings.device)
    return strategy, path, model


# ---- loading the weights --------------------------------------------------------------------------


def loads_on_rank0(cfg, ctx: DistContext, device: torch.device, model_cfg) -> bool:
    """Whether rank 0 alone reads the weights: several ranks under torchrun, `distributed.fsdp_load:
    rank0` (the default), and strategy fsdp, or `auto` on GPUs where the model is too large for one
    (judged on a weightless skeleton, as `choose_strategy` judges the loaded model). A 4-bit base is
    never sharded, so QLoRA loads on every rank, and so does a checkpoint saved quantized (`*-bnb-4bit`,
    read from its config.json): a weightless skeleton of it would not be the quantized model rank 0
    loads, so the ranks would disagree on what to shard; loading it everywhere, every rank reaches the
    same refusal (`fsdp_unsupported_reason`, or method full on a 4-bit model) with the same message."""
    if not ctx.enabled or ctx.world_size < 2 or cfg.method == "qlora" or cfg.distributed.fsdp_load != "rank0":
        return False
    from honed.model.load import model_type_of

    if model_type_of(model_cfg.name_or_path, model_cfg)[1]:
        log.info("distributed.fsdp_load rank0: %s is saved quantized; every rank loads it", model_cfg.name_or_path)
        return False
    if cfg.distributed.strategy == "auto" and device.type == "cuda":
        from honed.train.fsdp import build_skeleton

        skeleton, _ = build_skeleton(model_cfg, device)
        # LoRA's adapters are not on the skeleton: the weights alone, which the loaded model only exceeds
        need = training_bytes(skeleton, "full") if cfg.method == "full" else sum(p.numel() * p.element_size() for p in skeleton.parameters())
        return need > 0.8 * torch.cuda.get_device_properties(device).total_memory
    return cfg.distributed.strategy == "fsdp"


def load_model_for_run(cfg, ctx: DistContext, device: torch.device, model_cfg, load) -> tuple:
    """(model, info, from_rank0). `load(model_cfg, device)` is how the run loads its base; under FSDP
    with `loads_on_rank0`, only rank 0 calls it (on the CPU, in the dtype `device` would give: the one
    copy in host memory) and the other ranks build the architecture without weights
    (`honed.train.fsdp.build_skeleton`); `shard_model(..., from_rank0=True)` then sends each rank its shards."""
    if not loads_on_rank0(cfg, ctx, device, model_cfg):
        return (*load(model_cfg, device), False)
    if not ctx.is_main:
        from honed.train.fsdp import build_skeleton

        return (*build_skeleton(model_cfg, device), True)
    from honed.model.load import resolve_dtype

    dtype = str(resolve_dtype(model_cfg.dtype, device)).removeprefix("torch.")
    return (*load(model_cfg.model_copy(update={"dtype": dtype}), torch.device("cpu")), True)


# ---- checkpoints ----------------------------------------------------------------------------------


def save_sharded_checkpoint(target: Path, run, state, *, keep: int | None, save_model_files=None) -> None:
    """Every rank writes its shards (Distributed Checkpoint); rank 0 adds trainer_state.json, which
    marks the folder as a checkpoint for `resume`, and prunes the oldest beyond `keep`.

    `save_model_files(folder, state_dict)` (LoRA runs): rank 0 also writes the adapter gathered from
    the shards in peft's format, as a one-process checkpoint holds it, so `--adapter RUN` and every
    command that takes a run folder can use an interrupted FSDP run's latest checkpoint."""
    from honed.model.runs import list_checkpoints
    from honed.train.checkpoint import rng_state
    from honed.train.dist_checkpoint import save_sharded

    extra = {"scheduler": run.scheduler.state_dict(), "rng": rng_state()}
    if run.scaler is not None:
        extra["scaler"] = run.scaler.state_dict()
    write = None
    if save_model_files is not None:
        weights = gathered_weights(run)  # collective: every rank gathers, rank 0 receives
        write = (lambda folder: save_model_files(folder, weights)) if run.dist.is_main else None
    save_sharded(target, run.model, run.optimizer, extra=extra, files={"trainer_state.json": json.dumps(asdict(state), indent=2)},
                 write=write)
    if run.dist.is_main and keep:
        for old in list_checkpoints(run.output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_sharded_checkpoint(path: Path, run):
    """Restore a sharded checkpoint on any number of ranks; returns its TrainState."""
    from honed.train.checkpoint import TrainState, set_rng_state
    from honed.train.dist_checkpoint import METADATA_FILE, load_sharded

    if not (Path(path) / METADATA_FILE).is_file():
        raise ConfigError(f"training.resume: {path} is a whole-model checkpoint (one process or DDP), and this run shards "
                          "with distributed.strategy: fsdp; resume it with strategy ddp (or one process)")
    extra = load_sharded(path, run.model, run.optimizer)
    run.scheduler.load_state_dict(extra["scheduler"])
    if run.scaler is not None and "scaler" in extra:
        run.scaler.load_state_dict(extra["scaler"])
    if extra.get("rng") is not None:
        set_rng_state(extra["rng"])
    return TrainState(**json.loads((Path(path) / "trainer_state.json").read_text()))


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a checkpoint written by Distributed Checkpoint (an FSDP run): it loads on any number
    of processes, one without torchrun included."""
    from honed.train.dist_checkpoint import METADATA_FILE

    return (Path(path) / METADATA_FILE).is_file()


# ---- the final weights ----------------------------------------------------------------------------


def gathered_weights(run) -> dict | None:
    """The whole weights gathered from the shards, on rank 0 (None on the others): every rank calls
    this, since the gathering is collective. LoRA runs gather the adapter weights only."""
    from honed.train.dist_checkpoint import full_state_dict_for_saving

    state = full_state_dict_for_saving(run.model, trainable_only=run.cfg.method != "full")
    if not run.dist.is_main:
        return None
    # A tied weight (the LM head sharing the embeddings) is saved once, under its first name, as
    # save_pretrained does with the model's own state.
    names = {n for n, _ in run.model.named_parameters()} | {n for n, _ in run.model.named_buffers()}
    return {k: v for k, v in state.items() if k in names}


def save_gathered_weights(run, target: Path, save) -> None:
    """`save(state_dict)` on rank 0 with the whole weights gathered from the shards (every rank
    calls this: the gathering is collective). LoRA runs gather the adapter weights only."""
    state = gathered_weights(run)
    if run.dist.is_main:
        save(state)
