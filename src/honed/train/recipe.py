"""The parts of a training run, each with a name: set-up, one optimizer step, evaluation, checkpoint.

`honed.train.sft.train` wires them into the loop a reader follows top to bottom; `honed bench`
builds a run from the same set-up parts and times the same `train_step`.

    run = setup_run(cfg)                                    # model, path, objective, data, optimizer, state
    samples, batches = epoch_batches(run, run.state.epoch)
    step = train_step(run, collate_group(run, samples, batches[:k]))   # ONE optimizer step
    val_loss = evaluate(run)
    save_checkpoint(run)

One optimizer step = `gradient_accumulation_steps` micro-batches on each process (world size × that
under torchrun: `honed.train.distributed`); each micro-batch's summed loss is divided by the step's
total weight over all processes (trained tokens for SFT: every token weighs the same however the
samples fell into micro-batches and processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from honed.config import TrainConfig
from honed.data.dataset import data_fingerprint
from honed.data.packing import plan_batches
from honed.engine import with_memory_fallback
from honed.errors import ConfigError
from honed.model.adapters import count_parameters
from honed.model.load import load_tokenizer, pick_device
from honed.train import checkpoint as ckpt
from honed.train.checkpoint import TrainState
from honed.train.distributed import (DistContext, accumulation_for, all_ranks, all_reduce_sum, barrier, union_of_keys, init_distributed,
                                     local_device, log_global_batch, main_first, oom_agreement, oom_stops_the_job, rank_share,
                                     sync_next_backward, wrap_ddp)
from honed.train.metrics_log import MetricsLog, NullMetrics
from honed.train.model_setup import (check_data_fits_model, check_method_precision, finish_training_model, load_base_model,  # noqa: F401
                                     prepare_training_path, training_model_config)  # (public here too: bench and tests import them)
from honed.train.objectives import ObjectiveData, get_objective
from honed.train.optim import build_optimizer, build_scheduler, warmup_steps_for
from honed.train.outputs import save_model_files, save_weights_atomic
from honed.train import sharding
from honed.utils.fs import check_output_dir, prepare_output_dir
from honed.engine.settings import EngineSettings, resolve_engine_settings
from honed.utils.precision import autocast_context
from honed.utils.seed import set_seed

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    """How many optimizer steps the run takes, and how often it evaluates and saves."""

    total_steps: int
    steps_per_epoch: int
    eval_every: int
    save_every: int


@dataclass
class TrainingRun:
    """Everything one training run holds. `honed bench` fills only the step's part (no data, no outputs)."""

    cfg: TrainConfig
    settings: EngineSettings  # device, resolved precision, memory policy ... (what the engine reads)
    model: torch.nn.Module
    path: object  # honed.engine.TrainingPath
    objective: object  # honed.train.objectives.Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    params: list = field(default_factory=list)  # the trainable parameters (what is clipped)
    measure_grad_norm: bool = True  # False skips the norm when nothing is clipped (bench: the peers do not compute it)
    tokenizer: object = None
    info: dict = field(default_factory=dict)  # what run_info.json says about the model
    data: ObjectiveData | None = None
    schedule: Schedule | None = None
    state: TrainState | None = None
    metrics: MetricsLog | None = None
    output_dir: Path | None = None
    fingerprint: str | None = None
    last_checkpoint: Path | None = None
    dist: DistContext = field(default_factory=DistContext)  # which process of a torchrun job (default: the only one)
    ddp: torch.nn.Module | None = None  # the DDP-wrapped loss the steps run through (None: one process, or fsdp)
    strategy: str | None = None  # ddp | fsdp under torchrun (distributed.strategy resolved), None for one process
    accumulation: int = 0  # micro-batches per optimizer step on this process (0: training.gradient_accumulation_steps)

    @property
    def micro_per_step(self) -> int:
        """Global micro-batches per optimizer step: world size × gradient accumulation."""
        return self.dist.world_size * (self.accumulation or self.cfg.training.gradient_accumulation_steps)


@dataclass
class StepResult:
    """One optimizer step's numbers. The losses stay on the device until read (no sync per step)."""

    micro_losses: list[torch.Tensor]  # each micro-batch's share of the step loss, detached
    grad_norm: torch.Tensor | None
    lr: float
    tokens: int  # real (non-padding) tokens the step trained on
    weight: int  # the divisor: trained tokens (SFT) or pairs (preference)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The step's loss: sum(loss_sum) / sum(weight) over its micro-batches."""
        return sum((x.item() for x in self.micro_losses), 0.0)


# ---- set-up -------------------------------------------------------------------------------------


def plan_schedule(cfg: TrainConfig, objective, data: ObjectiveData, micro_per_step: int | None = None) -> Schedule:
    """Steps per epoch from the first epoch's micro-batches; the run's total from epochs or max_steps.
    `micro_per_step`: global micro-batches per optimizer step (default: gradient_accumulation_steps)."""
    t = cfg.training
    micro_per_epoch = len(plan_epoch(cfg, objective, data, 0)[1])
    steps_per_epoch = math.ceil(micro_per_epoch / (micro_per_step or t.gradient_accumulation_steps))
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    return Schedule(total_steps=total_steps, steps_per_epoch=steps_per_epoch, eval_every=t.eval_steps or steps_per_epoch,
                    save_every=t.save_steps or steps_per_epoch)


def build_optimization(model, cfg: TrainConfig, settings: EngineSettings, total_steps: int):
    """(optimizer, scheduler, scaler): AdamW over the trainable weights, the LR schedule, and a
    gradient scaler for fp16 only."""
    t = cfg.training
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t.lr_scheduler, warmup_steps=warmup_steps_for(t, total_steps), total_steps=total_steps)
    scaler = torch.amp.GradScaler(settings.device.type) if settings.precision == "fp16" else None
    return optimizer, scheduler, scaler


def resume_state(run: TrainingRun, resume_from: Path | None) -> TrainState:
    """A fresh TrainState, or the one of the checkpoint to resume (checked against this run)."""
    state = TrainState(total_steps=run.schedule.total_steps, data_fingerprint=run.fingerprint, micro_batches_per_step=run.micro_per_step)
    if resume_from is None:
        return state
    if run.strategy == "fsdp" or sharding.is_sharded_checkpoint(resume_from):
        state = sharding.load_sharded_checkpoint(resume_from, run)
    else:
        state = ckpt.load_checkpoint(resume_from, run.model, run.optimizer, run.scheduler, run.scaler)
    state.micro_batches_per_step = run.micro_per_step
    if state.data_fingerprint and state.data_fingerprint != run.fingerprint:
        raise ConfigError(f"training.resume: {resume_from} was trained on other data (the data files or data settings changed); resume with the same data, or start a new run")
    if state.total_steps != run.schedule.total_steps:
        raise ConfigError(f"training.resume: {resume_from} was planned for {state.total_steps} steps, this config gives {run.schedule.total_steps}; keep the same data/batch/epochs to resume")
    # Only once the checkpoint is known to fit this run: the abandoned later ones go.
    if run.dist.is_main:
        ckpt.drop_checkpoints_after(run.output_dir, state.step)
    run.data.epochs.load_state_dict(state.data_state)
    log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", resume_from, state.step, state.epoch, state.batch_in_epoch)
    return state


def setup_run(cfg: TrainConfig) -> TrainingRun:
    """Everything before the first step: process group (under torchrun), seed, device and precision,
    model and training path, the objective's data, output folder, optimizer and schedule, and the
    state to start (or resume) from."""
    if cfg.stages:
        raise ConfigError("stages: a staged config trains through honed.train.stages.run_stages (as `honed train` does); train() alone would train only the top level")
    objective = get_objective(cfg)  # first: an objective this install lacks stops before anything is written
    t = cfg.training
    out = Path(t.output_dir)
    device = local_device(pick_device(t.device))  # cuda:LOCAL_RANK under torchrun
    dist_ctx = init_distributed(cfg, device)
    resume_from = ckpt.find_resume_checkpoint(t.resume, out)
    overwrite = t.overwrite and not t.resume
    check_output_dir(out, overwrite=overwrite, resuming=bool(t.resume))  # refuse early; clearing waits for good data
    accumulation = accumulation_for(dist_ctx, t.gradient_accumulation_steps, ckpt.saved_micro_per_step(resume_from))
    set_seed(t.seed)
    settings = resolve_engine_settings(cfg, device)  # precision resolved (and fp8 checked) here, once
    if dist_ctx.enabled and settings.cuda_graphs:
        # A captured graph would replay DDP's bucket all-reduces outside DDP's control: eager steps only.
        log.warning("training.cuda_graphs: off under torchrun (the gradient all-reduce cannot be captured with the step)")
        settings = dataclasses.replace(settings, cuda_graphs=False)
    if settings.fp8 and (saved_bases := ckpt.saved_fp8_bases(resume_from)) is not None:
        settings = dataclasses.replace(settings, fp8_bases=saved_bases)  # the bases chosen before the interruption
    device, precision = settings.device, settings.precision
    check_method_precision(cfg, precision)

    tokenizer = load_tokenizer(cfg.model)
    model, info, from_rank0 = sharding.load_model_for_run(cfg, dist_ctx, device, training_model_config(cfg),
                                                          lambda model_cfg, where: load_base_model(cfg, where, model_cfg))
    from honed.data.templates import get_template

    template = get_template(cfg.model.template, tokenizer, info["model_type"])
    data = objective.build_data(cfg, tokenizer, template)
    log.info("data: %s", data.report.summary())
    check_data_fits_model(model, objective, data, cfg.model.name_or_path)
    model, info = finish_training_model(model, info, cfg)
    strategy, path, model = sharding.prepare_strategy_and_path(cfg, dist_ctx, model, settings, from_rank0)
    trainable, total = count_parameters(model)
    info.update(method=cfg.method, objective=objective.name, precision=precision, device=str(device), trainable_params=trainable,
                total_params=total, training_path=path.name)
    log.info("model: %s %s on %s, %s, %.3g M trainable of %.3g M parameters", info["model_type"], cfg.method, device, precision, trainable / 1e6, total / 1e6)
    # Only now, with the data read and the model loaded: bad data or a model that fails to load
    # loses nothing of an existing output folder that `overwrite` would clear.
    if dist_ctx.is_main:
        prepare_output_dir(out, overwrite=overwrite, resuming=bool(t.resume))
    barrier(dist_ctx)

    micro_per_step = dist_ctx.world_size * accumulation
    schedule = plan_schedule(cfg, objective, data, micro_per_step)
    optimizer, scheduler, scaler = build_optimization(model, cfg, settings, schedule.total_steps)
    run = TrainingRun(cfg=cfg, settings=settings, model=model, path=path, objective=objective, optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, params=[p for p in model.parameters() if p.requires_grad], tokenizer=tokenizer,
                      info=info, data=data, schedule=schedule, output_dir=out, fingerprint=data_fingerprint(cfg.data),
                      dist=dist_ctx, accumulation=accumulation, strategy=strategy)
    if dist_ctx.enabled:
        info.update(strategy=strategy, **log_global_batch(dist_ctx, t.batch_size, accumulation))
    run.state = resume_state(run, resume_from)
    run.state.fp8_bases = getattr(path, "fp8_bases", None)  # recorded with every checkpoint, for a resume to keep
    prepare = getattr(objective, "prepare_reference", None)  # preference objectives: cached reference log-probs
    if prepare is not None:
        main_first(dist_ctx, lambda: prepare(run))  # rank 0 computes and writes the cache; the others then read it
    # Rows past the resumed step (or every row, when a run died before its first checkpoint) go.
    run.metrics = MetricsLog(out, tensorboard=t.tensorboard, resume_step=run.state.step) if dist_ctx.is_main else NullMetrics()
    if strategy == "ddp":
        run.ddp = wrap_ddp(dist_ctx, model, path, objective, bucket_mb=cfg.distributed.ddp_bucket_mb, device=device)
    return run


# ---- data for the steps -------------------------------------------------------------------------


def plan_epoch(cfg: TrainConfig, objective, data: ObjectiveData, epoch: int) -> tuple[list, list]:
    """(samples, micro-batches) of an epoch: each micro-batch lists rows of sample indices."""
    samples = data.epochs.samples(epoch)
    lengths = [objective.sample_length(s) for s in samples]
    batches = plan_batches(lengths, order=data.epochs.order(epoch), batch_size=cfg.training.batch_size,
                           max_seq_length=cfg.data.max_seq_length, packing=cfg.data.packing)
    return samples, batches


def epoch_batches(run: TrainingRun, epoch: int) -> tuple[list, list]:
    """`plan_epoch` of this run's objective and data."""
    return plan_epoch(run.cfg, run.objective, run.data, epoch)


def collate_group(run: TrainingRun, samples: list, group: list) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of one optimizer step, laid out as the path takes them (padding-free or not)."""
    return [run.objective.collate(samples, rows, pad_id=run.tokenizer.pad_token_id, packing=run.cfg.data.packing,
                                  padding_free=run.path.padding_free) for rows in group]


def local_micro_batches(run: TrainingRun, samples: list, group: list) -> tuple[list[dict[str, torch.Tensor]], bool]:
    """(this process's micro-batches of a step's global `group`, idle). At an epoch's end a group may
    hold fewer micro-batches than processes: an idle process runs the group's first one with weight 0,
    so that it still joins the gradient all-reduce (and adds nothing to it)."""
    share = rank_share(run.dist, group)
    return (collate_group(run, samples, share), False) if share else (collate_group(run, samples, group[:1]), True)


# ---- one optimizer step -------------------------------------------------------------------------


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding (every token where the batch has no sample_index)."""
    owner = batch.get("sample_index")
    return int((owner >= 0).sum()) if owner is not None else batch["input_ids"].numel()


def accumulate_gradients(run: TrainingRun, micro_batches: list, total_weight: int, scale: float = 1.0) -> tuple[list, dict]:
    """Forward and backward of every micro-batch, each loss divided by the step's total weight (and
    multiplied by `scale`: 0 for an idle process). Returns (each micro-batch's detached loss, the
    objective's metrics summed). Under DDP, gradients are all-reduced in the last backward only, once
    every rank has come that far without running out of memory (see honed.train.distributed)."""
    losses, metrics, pending = [], {}, None
    fsdp = run.strategy == "fsdp"
    with oom_stops_the_job(run.dist, "in an FSDP step") if fsdp else contextlib.nullcontext():
        with oom_agreement(run.dist, run.settings.device, enabled=run.ddp is not None):
            for i, batch in enumerate(micro_batches):
                last = i == len(micro_batches) - 1
                if fsdp:
                    run.model.set_requires_gradient_sync(last)  # reduce-scatter once, after the last micro-batch
                with run.ddp.no_sync() if run.ddp is not None else contextlib.nullcontext():
                    pending = _micro_batch_loss(run, batch, total_weight, scale, losses, metrics)
                    if run.ddp is None or not last:
                        pending.backward()
                        pending = None  # the graph goes now, not during the next forward (engine.graphs needs it gone)
        if pending is not None:  # DDP: this backward all-reduces the gradients
            sync_next_backward(run.ddp)
            with oom_stops_the_job(run.dist, "in the last backward of a step (its gradient all-reduce had begun)"):
                pending.backward()
    return losses, metrics


def _micro_batch_loss(run: TrainingRun, batch: dict, total_weight: int, scale: float, losses: list, metrics: dict) -> torch.Tensor:
    """One micro-batch's forward: its detached loss share and metrics appended; returns what to backpropagate."""
    batch = {k: v.to(run.settings.device, non_blocking=True) for k, v in batch.items()}
    with autocast_context(run.settings.precision, run.settings.device):
        out = run.ddp(batch) if run.ddp is not None else run.objective.loss(run.path, run.model, batch)
    loss = out.loss_sum / max(total_weight, 1)
    # FSDP2 averages gradients over ranks: ×world size makes that the sum (DDP sums by its comm hook)
    backward = loss * (scale * run.dist.world_size if run.strategy == "fsdp" else scale)
    losses.append(loss.detach() * scale)
    for key, value in out.metrics.items():
        metrics[key] = metrics.get(key, 0.0) + float(value) * scale
    return run.scaler.scale(backward) if run.scaler else backward


def train_step(run: TrainingRun, micro_batches: list[dict[str, torch.Tensor]], *, idle: bool = False) -> StepResult:
    """ONE optimizer step over `micro_batches`: accumulate (again with a leaner memory plan when the
    GPU runs out), unscale (fp16), clip to training.max_grad_norm, step, schedule, zero the gradients.
    Under torchrun the weight, loss, tokens and metrics are sums over all processes; `idle`: this
    process has no micro-batch in this step (see local_micro_batches)."""
    total_weight = 0 if idle else sum(run.objective.weight(b) for b in micro_batches)
    if run.dist.enabled:
        total_weight = int(all_reduce_sum(run.dist, [total_weight], run.settings.device)[0])
    accumulate = functools.partial(accumulate_gradients, run, micro_batches, total_weight, 0.0 if idle else 1.0)
    agree = functools.partial(all_ranks, run.dist, device=run.settings.device) if run.ddp is not None else None
    losses, metrics = with_memory_fallback(run.path, run.model, accumulate, agree)
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    clip = run.cfg.training.max_grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, clip or float("inf")) if clip or run.measure_grad_norm else None
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm is a DTensor over the shards
        grad_norm = grad_norm.full_tensor()
    lr = run.scheduler.get_last_lr()[0]
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    tokens = 0 if idle else sum(real_tokens(b) for b in micro_batches)
    if run.dist.enabled:  # one collective for the numbers the log shows
        keys = sorted(metrics)
        summed = all_reduce_sum(run.dist, [sum(x.item() for x in losses), tokens, *(metrics[k] for k in keys)], run.settings.device)
        losses, tokens, metrics = [torch.tensor(summed[0])], int(summed[1]), dict(zip(keys, summed[2:]))
    return StepResult(micro_losses=losses, grad_norm=grad_norm, lr=lr, tokens=tokens, weight=total_weight, metrics=metrics)


# ---- evaluation and checkpoints -----------------------------------------------------------------


@torch.no_grad()
def evaluate(run: TrainingRun, samples: list | None = None, metrics: dict | None = None) -> float:
    """The objective's mean loss over the validation samples (or `samples`): sum(loss_sum) / sum(weight).
    `metrics`, when given, receives the objective's metrics summed over every batch (preference: rewards,
    margin, accuracy and `pairs`; `objective.step_metrics` turns them into means)."""
    samples = run.data.val if samples is None else samples
    model, cfg = run.model, run.cfg
    model.eval()
    total, count = 0.0, 0
    lengths = [run.objective.sample_length(s) for s in samples]
    planned = plan_batches(lengths, batch_size=cfg.training.batch_size, max_seq_length=cfg.data.max_seq_length, packing=cfg.data.packing)
    share = [(rows, 1) for rows in rank_share(run.dist, planned)]  # each process its share; the sums are added up below
    if run.strategy == "fsdp" and planned:  # every rank runs as many forwards (each one gathers weights): pad with weight 0
        share += [(planned[0], 0)] * (math.ceil(len(planned) / run.dist.world_size) - len(share))
    for rows, counted in share:
        batch = run.objective.collate(samples, rows, pad_id=run.tokenizer.pad_token_id, packing=cfg.data.packing, padding_free=run.path.padding_free)
        batch = {k: v.to(run.settings.device) for k, v in batch.items()}
        with autocast_context(run.settings.precision, run.settings.device):
            out = run.objective.loss(run.path, model, batch)
        total, count = total + counted * float(out.loss_sum), count + counted * out.weight
        if metrics is not None:
            for key, value in out.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + counted * float(value)
    model.train()
    keys = union_of_keys(run.dist, metrics) if metrics is not None else []
    summed = all_reduce_sum(run.dist, [total, count, *(metrics.get(k, 0.0) for k in keys)], run.settings.device)
    total, count = summed[0], summed[1]
    if metrics is not None:
        metrics.update(zip(keys, summed[2:]))
    return total / max(count, 1)


def save_checkpoint(run: TrainingRun) -> Path:
    """A resumable checkpoint of the run as it is now (weights, optimizer, scheduler, RNG, data position)."""
    run.state.data_state = run.data.epochs.state_dict()
    save_files = None
    if run.cfg.method != "full":
        save_files = functools.partial(save_model_files, run.model, None, scope_prompt=run_scope_prompt(run))  # the adapter, loadable by peft
    target = ckpt.checkpoint_dir(run.output_dir, run.state.step)
    if run.strategy == "fsdp":  # every rank writes its shards; rank 0 adds the gathered adapter
        sharding.save_sharded_checkpoint(target, run, run.state, keep=run.cfg.training.save_total_limit,
                                         save_model_files=save_files and (lambda folder, state: save_files(folder, state_dict=state)))
    elif run.dist.is_main:  # with DDP every process holds the whole state: rank 0's is the checkpoint
        ckpt.save_checkpoint(run.output_dir, run.model, run.optimizer, run.scheduler, run.state, scaler=run.scaler,
                             save_model_files=save_files, keep=run.cfg.training.save_total_limit)
    barrier(run.dist)  # nobody goes on (or exits) before the checkpoint is complete
    run.last_checkpoint = target
    return run.last_checkpoint


def save_weights(run: TrainingRun, target: Path) -> None:
    """The model's weights (the adapter for LoRA) into `target`, written by rank 0; under FSDP every
    rank calls this, since the weights are gathered from the shards first."""
    if run.strategy == "fsdp":
        sharding.save_gathered_weights(run, target, lambda state: save_weights_atomic(run.model, run.tokenizer, target, run_scope_prompt(run), state))
    elif run.dist.is_main:
        save_weights_atomic(run.model, run.tokenizer, target, run_scope_prompt(run))


def run_scope_prompt(run: TrainingRun) -> str | None:
    """The scope prompt the run trains with: it travels with every adapter, checkpoint and final model."""
    from honed.data.dataset import scope_prompt

    return scope_prompt(run.cfg.data)


def checkpoint_is_current(run: TrainingRun) -> bool:
    """True when the last checkpoint saved is of the step the run is at."""
    return run.last_checkpoint is not None and ckpt.checkpoint_step(run.last_checkpoint) == run.state.step
