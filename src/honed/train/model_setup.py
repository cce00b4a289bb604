"""Training set-up of the model: the base loaded as `method` wants it, its adapters, and the training
path that computes its loss (split from `honed.train.recipe`, which re-exports these names).

>>> model, info = load_base_model(cfg, device); model, info = finish_training_model(model, info, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import torch

from honed.config import TrainConfig
from honed.data.dataset import check_token_ids
from honed.engine import select_path
from honed.engine.settings import EngineSettings
from honed.errors import ConfigError
from honed.model.adapters import apply_lora
from honed.model.load import load_model

log = logging.getLogger(__name__)


def training_model_config(cfg: TrainConfig):
    """The model settings training loads with: full fine-tuning keeps fp32 master weights when the
    dtype is `auto` (compute still runs in bf16 under autocast), since AdamW updates applied to
    bf16 weights round away — at lr 5e-5, most of them."""
    if cfg.method == "full" and cfg.model.dtype == "auto":
        return cfg.model.model_copy(update={"dtype": "float32"})
    return cfg.model


def check_method_precision(cfg: TrainConfig, precision: str) -> None:
    """fp16 cannot hold full fine-tuning's master weights (bf16 and fp32 can)."""
    if precision == "fp16" and cfg.method == "full":
        raise ConfigError("training.precision=fp16 with method=full would update fp16 master weights; use bf16 or fp32")


def load_base_model(cfg: TrainConfig, device: torch.device, model_cfg=None):
    """(model, info): the base model as `method` loads it (4-bit for qlora, fp32 master weights for
    full fine-tuning; `model_cfg` instead of `training_model_config(cfg)`); `finish_training_model` adds the adapters."""
    return load_model(model_cfg or training_model_config(cfg), device=device, quantization=cfg.quantization if cfg.method == "qlora" else None)


def finish_training_model(model, info: dict, cfg: TrainConfig):
    """Adapters (LoRA/QLoRA) and gradient checkpointing on a loaded base, as `method` asks."""
    t = cfg.training
    if info["quantized"] and cfg.method == "full":
        raise ConfigError(f"method=full cannot train a 4-bit model ({cfg.model.name_or_path}); use method=qlora")
    if cfg.method in ("lora", "qlora"):
        with _quiet_on_a_skeleton(model):
            model = apply_lora(model, cfg.lora, quantized=info["quantized"], gradient_checkpointing=t.gradient_checkpointing)
    if t.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so frozen embeddings are fine.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, info


@contextlib.contextmanager
def _quiet_on_a_skeleton(model):
    """Under FSDP rank-0 loading the other ranks hold a weightless (meta) skeleton: `lora.init_from`
    reads the adapter file into it, which copies nothing, and torch warns once per adapter weight. The
    weights reach those ranks from rank 0 when the model is sharded (`honed.train.fsdp.shard_from_rank0`),
    so those warnings are silenced there, and only there."""
    with warnings.catch_warnings():
        if next(model.parameters()).device.type == "meta":
            warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter in the checkpoint to a meta parameter")
        yield


def check_data_fits_model(model, objective, data, model_name: str) -> None:
    """Every token id of the data must index the model's input embeddings (see check_token_ids)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, torch.nn.Embedding):
        token_samples = [_TokenIds(objective.token_ids(s), getattr(s, "source", "?")) for s in (*data.train, *data.val)]
        check_token_ids(token_samples, embeddings.num_embeddings, model_name)


@dataclass
class _TokenIds:
    input_ids: list[int]
    source: str


def prepare_training_path(model, settings: EngineSettings, path=None):
    """(path, model): the training path `select_path` picks (or `path`), with the model it prepared."""
    path = path if path is not None else select_path(model, settings)
    if settings.cuda_graphs and path.name != "fused":
        log.info("training.cuda_graphs: not used, the %s path has no graphs (only the fused path on CUDA does)", path.name)
    model = path.prepare(model)
    model.train()
    return path, model
