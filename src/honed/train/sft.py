"""Supervised fine-tuning, top to bottom: setup → loop → save.

One optimizer step = `gradient_accumulation_steps` micro-batches; each micro-batch's summed token
loss is divided by the number of trained tokens in the whole step, so every token weighs the same
however the samples fell into micro-batches.

>>> result = train(load_config("configs/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from honed.config import TrainConfig
from honed.data.dataset import build_datasets, check_token_ids, data_fingerprint
from honed.data.epochs import make_epoch_data
from honed.train.scoring import score_samples, score_with_model
from honed.data.packing import collate, plan_batches
from honed.errors import ConfigError, HonedError
from honed.model.adapters import apply_lora, count_parameters
from honed.model.load import load_model, load_tokenizer, pick_device
from honed.train.defaults import resolve_data_defaults
from honed.train.checkpoint import TrainState, checkpoint_step, drop_checkpoints_after, find_resume_checkpoint, load_checkpoint, save_checkpoint
from honed.engine import PlainPath, select_path, with_memory_fallback
from honed.train.losses import count_trained_tokens
from honed.train.metrics_log import MetricsLog, read_metrics
from honed.train.optim import build_optimizer, build_scheduler, warmup_steps_for
from honed.train.outputs import plot_losses, save_model_files, save_weights_atomic, write_run_record
from honed.train.progress import TrainProgress
from honed.utils.fs import prepare_output_dir
from honed.utils.precision import autocast_dtype
from honed.utils.seed import set_seed

log = logging.getLogger(__name__)


class TrainingInterrupted(HonedError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # train loss at every optimizer step
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    last_checkpoint: Path | None = None


def autocast_context(precision: str, device: torch.device):
    """Mixed-precision compute for bf16/fp16, and bf16 for fp8 (only the frozen LoRA bases are fp8); nothing for fp32."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def training_model_config(cfg: TrainConfig):
    """The model settings training loads with: full fine-tuning keeps fp32 master weights when the
    dtype is `auto` (compute still runs in bf16 under autocast), since AdamW updates applied to
    bf16 weights round away — at lr 5e-5, most of them."""
    if cfg.method == "full" and cfg.model.dtype == "auto":
        return cfg.model.model_copy(update={"dtype": "float32"})
    return cfg.model


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU that has it, else fp32. `fp8` is checked against the device here, before the model loads."""
    if precision == "fp8":
        from honed.engine.fp8 import check_fp8_device

        check_fp8_device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device.type == "cpu":
        log.warning("training.precision=%s on CPU runs slowly; fp32 is the CPU default", precision)
    return precision


@torch.no_grad()
def evaluate_loss(model, samples, cfg: TrainConfig, device, precision: str, pad_id: int, padding_free: bool = False, path=None) -> float:
    """Token-weighted mean loss over trained (assistant) tokens of the given samples."""
    path = path or PlainPath()
    model.eval()
    total, count = 0.0, 0
    lengths = [len(s.input_ids) for s in samples]
    for rows in plan_batches(lengths, batch_size=cfg.training.batch_size, max_seq_length=cfg.data.max_seq_length, packing=cfg.data.packing):
        batch = collate([[samples[i] for i in row] for row in rows], packing=cfg.data.packing, pad_id=pad_id, padding_free=padding_free)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(precision, device):
            loss_sum, n = path.loss_sum(model, batch)
        total, count = total + float(loss_sum), count + n
    model.train()
    return total / max(count, 1)


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (a checkpoint is then saved)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum
        log.warning("signal %s received: finishing this step, saving a checkpoint, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, *, stop_after_steps: int | None = None, show_progress: bool = True) -> TrainResult:
    """Run SFT as configured. `stop_after_steps` saves a checkpoint and stops early (as SIGTERM would)."""
    if cfg.stages:
        raise ConfigError("stages: a staged config trains through honed.train.stages.run_stages (as `honed train` does); train() alone would train only the top level")
    started = time.time()
    cfg = resolve_data_defaults(cfg)  # log the data-size suggestion, fill `auto` keys (honed.train.defaults)
    t = cfg.training
    out = Path(t.output_dir)

    # ---- setup -------------------------------------------------------------------------
    resume_from = find_resume_checkpoint(t.resume, out)
    prepare_output_dir(out, overwrite=t.overwrite and not t.resume, resuming=bool(t.resume))
    set_seed(t.seed)
    device = pick_device(t.device)
    precision = resolve_precision(t.precision, device)
    if precision == "fp16" and cfg.method == "full":
        raise ConfigError("training.precision=fp16 with method=full would update fp16 master weights; use bf16 or fp32")

    tokenizer = load_tokenizer(cfg.model)
    model, info = load_model(training_model_config(cfg), device=device, quantization=cfg.quantization if cfg.method == "qlora" else None)
    from honed.data.templates import get_template

    template = get_template(cfg.model.template, tokenizer, info["model_type"])
    train_set, val_set, report, train_convs = build_datasets(cfg.data, tokenizer, template, t.seed, cfg.model.enable_thinking)
    log.info("data: %s", report.summary())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, torch.nn.Embedding):
        check_token_ids([*train_set, *val_set], embeddings.num_embeddings, cfg.model.name_or_path)

    if info["quantized"] and cfg.method == "full":
        raise ConfigError(f"method=full cannot train a 4-bit model ({cfg.model.name_or_path}); use method=qlora")
    if cfg.method in ("lora", "qlora"):
        model = apply_lora(model, cfg.lora, quantized=info["quantized"], gradient_checkpointing=t.gradient_checkpointing)
    if t.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so frozen embeddings are fine.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    path = select_path(model, cfg, device)
    if t.cuda_graphs and path.name != "fused":
        log.info("training.cuda_graphs: not used, the %s path has no graphs (only the fused path on CUDA does)", path.name)
    model = path.prepare(model)
    # Varlen attention (the fused path's, or transformers' flash) takes one padding-free row per
    # micro-batch; with a dense mask, padded rows are cheaper. Known only once the path has chosen.
    padding_free = path.padding_free
    model.train()
    trainable, total = count_parameters(model)
    info.update(method=cfg.method, precision=precision, device=str(device), trainable_params=trainable, total_params=total, training_path=path.name)
    log.info("model: %s %s on %s, %s, %.3g M trainable of %.3g M parameters", info["model_type"], cfg.method, device, precision, trainable / 1e6, total / 1e6)

    epoch_data = make_epoch_data(cfg, train_convs, train_set, tokenizer, template, score_with_model=score_with_model)
    plan_args = dict(batch_size=t.batch_size, max_seq_length=cfg.data.max_seq_length, packing=cfg.data.packing)

    def plan_epoch(epoch: int) -> tuple[list, list]:
        samples = epoch_data.samples(epoch)
        return samples, plan_batches([len(s.input_ids) for s in samples], order=epoch_data.order(epoch), **plan_args)

    micro_per_epoch = len(plan_epoch(0)[1])
    steps_per_epoch = math.ceil(micro_per_epoch / t.gradient_accumulation_steps)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    eval_every = t.eval_steps or steps_per_epoch
    save_every = t.save_steps or steps_per_epoch

    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t.lr_scheduler, warmup_steps=warmup_steps_for(t, total_steps), total_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    fingerprint = data_fingerprint(cfg.data)
    state = TrainState(total_steps=total_steps, data_fingerprint=fingerprint)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer, scheduler, scaler)
        if state.data_fingerprint and state.data_fingerprint != fingerprint:
            raise ConfigError(f"training.resume: {resume_from} was trained on other data (the data files or data settings changed); resume with the same data, or start a new run")
        if state.total_steps != total_steps:
            raise ConfigError(f"training.resume: {resume_from} was planned for {state.total_steps} steps, this config gives {total_steps}; keep the same data/batch/epochs to resume")
        # Only once the checkpoint is known to fit this run: the abandoned later ones go.
        drop_checkpoints_after(out, state.step)
        epoch_data.load_state_dict(state.data_state)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", resume_from, state.step, state.epoch, state.batch_in_epoch)

    # Rows past the resumed step (or every row, when a run died before its first checkpoint) go.
    metrics = MetricsLog(out, tensorboard=t.tensorboard, resume_step=state.step)
    result = TrainResult(output_dir=out, steps=state.step, best_step=state.best_step)
    save_adapter = (lambda folder: save_model_files(model, None, folder)) if cfg.method != "full" else None

    def checkpoint() -> Path:
        state.data_state = epoch_data.state_dict()
        saved = save_checkpoint(out, model, optimizer, scheduler, state, scaler=scaler, save_model_files=save_adapter, keep=t.save_total_limit)
        result.last_checkpoint = saved
        return saved

    # ---- loop --------------------------------------------------------------------------
    progress = TrainProgress(total_steps, enabled=show_progress, start=state.step)
    with contextlib.closing(metrics), _StopSignal() as stop, progress:
        while state.step < total_steps:
            train_set, batches = plan_epoch(state.epoch)
            while state.batch_in_epoch < len(batches) and state.step < total_steps:
                group = batches[state.batch_in_epoch : state.batch_in_epoch + t.gradient_accumulation_steps]
                step_start = time.perf_counter()
                micro = [
                    collate([[train_set[i] for i in row] for row in rows], packing=cfg.data.packing, pad_id=tokenizer.pad_token_id, padding_free=padding_free)
                    for rows in group
                ]
                n_trained = sum(count_trained_tokens(b["labels"]) for b in micro)

                def accumulate(micro=micro, n_trained=n_trained) -> float:
                    step_loss = 0.0
                    for batch in micro:
                        batch = {k: v.to(device) for k, v in batch.items()}
                        with autocast_context(precision, device):
                            loss_sum, _ = path.loss_sum(model, batch)
                        loss = loss_sum / max(n_trained, 1)
                        (scaler.scale(loss) if scaler else loss).backward()
                        step_loss += loss.item()
                        del loss_sum, loss  # the graph goes now, not during the next forward (engine.graphs needs it gone)
                    return step_loss

                step_loss = with_memory_fallback(path, model, accumulate)
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm or float("inf"))
                lr = scheduler.get_last_lr()[0]
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                n_tokens = sum(int((b["sample_index"] >= 0).sum()) for b in micro)  # real tokens, not padding
                state.step += 1
                state.batch_in_epoch += len(group)
                state.tokens_seen += n_tokens
                elapsed = time.perf_counter() - step_start
                result.losses.append(step_loss)
                progress.update(state.step, loss=step_loss, lr=lr, tokens_per_s=n_tokens / elapsed)
                if state.step % t.logging_steps == 0 or state.step == total_steps:
                    metrics.write("train", state.step, loss=step_loss, lr=lr, grad_norm=float(grad_norm), tokens_per_s=n_tokens / elapsed, epoch=state.epoch)

                if val_set and (state.step % eval_every == 0 or state.step == total_steps):
                    val_loss = evaluate_loss(model, val_set, cfg, device, precision, tokenizer.pad_token_id, padding_free, path)
                    result.val_losses.append((state.step, val_loss))
                    metrics.write("eval", state.step, loss=val_loss)
                    progress.note(f"step {state.step}: validation loss {val_loss:.4f}")
                    if state.best_val_loss is None or val_loss < state.best_val_loss:
                        state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, state.step, 0
                        save_weights_atomic(model, tokenizer, out / "best")
                        result.best_step = state.step
                    else:
                        state.evals_without_improvement += 1
                if t.early_stopping_patience and state.evals_without_improvement >= t.early_stopping_patience:
                    progress.note(f"early stop: no validation improvement in {t.early_stopping_patience} evaluations (best step {state.best_step})")
                    result.stopped_early = True
                    break

                if state.step % save_every == 0 or state.step == total_steps:
                    checkpoint()
                if stop.received is not None or (stop_after_steps is not None and state.step >= stop_after_steps):
                    if result.last_checkpoint is None or checkpoint_step(result.last_checkpoint) != state.step:
                        checkpoint()
                    result.steps, result.interrupted = state.step, True
                    if stop.received is not None:
                        raise TrainingInterrupted(f"stopped at step {state.step}; checkpoint saved to {result.last_checkpoint}. Resume with training.resume=true")
                    return result
            if result.stopped_early:
                break
            if state.batch_in_epoch >= len(batches):
                epoch_data.end_epoch(state.epoch, lambda s: score_samples(model, s, device=device, pad_id=tokenizer.pad_token_id, precision=precision))
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    # ---- save --------------------------------------------------------------------------
    save_weights_atomic(model, tokenizer, out)
    if getattr(path, "plan", None) is not None:  # the fused path's memory plan, as it ended (after any out-of-memory retry)
        info["memory_plan"] = dataclasses.asdict(path.plan)
    if hasattr(path, "embeddings_on_host"):  # the fused path: whether the input embeddings were read from host memory
        info["embeddings_on_host"] = path.embeddings_on_host
    if getattr(path, "graphs", None) is not None:  # training.cuda_graphs: how often the stack replayed
        info["cuda_graphs"] = path.graphs.summary()
        log.info("CUDA graphs: %(captures)d captured, %(replays)d replays, %(eager_runs)d micro-batches eager, %(capture_s).1f s capturing", info["cuda_graphs"])
    write_run_record(out, cfg, fingerprint=fingerprint, info=info, report=report.to_dict(), started=started)
    plot_losses(read_metrics(out / "metrics.jsonl"), out / "loss_curve.png")
    result.steps = state.step
    return result
