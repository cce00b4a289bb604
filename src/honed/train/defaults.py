"""Hyper-parameters from the size of the data: a suggestion logged by every `honed train`, a
warning when the config strays far from it, and the values picked for keys set to `auto`
(`training.learning_rate`, `training.epochs`, `lora.r`, `data.val_ratio`).

The rules (small-data guidance for instruction tuning; a starting point, not an optimum):

| training samples | LoRA/QLoRA lr | full lr | epochs | LoRA r | val_ratio | early stopping |
|------------------|---------------|---------|--------|--------|-----------|----------------|
| < 200            | 1e-4          | 1e-5    | 5      | 8      | 0.15      | patience 3     |
| 200 – 999        | 2e-4          | 2e-5    | 3      | 16     | 0.10      | patience 3     |
| 1 000 – 9 999    | 2e-4          | 2e-5    | 2      | 32     | 0.05      | —              |
| ≥ 10 000         | 1e-4          | 1e-5    | 1      | 64     | 0.02      | —              |

Why: few samples are memorised fast, so a lower rate, a small rank (fewer parameters to over-fit)
and a validation split with early stopping catch the point where validation loss turns; more
passes are needed for so few steps to move the model at all. Many samples carry enough signal in
one or two passes and can use a larger rank. Long samples (mean > 1 024 tokens) hold more
training signal each, so one epoch fewer; very short ones (< 64 tokens) need no rank above 16.

>>> s = suggest_hyperparameters(300, 180, "lora")
>>> s.learning_rate, s.epochs, s.lora_r, s.val_ratio, s.early_stopping_patience
(0.0002, 3, 16, 0.1, 3)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from honed.config import TrainConfig

log = logging.getLogger(__name__)

# (fewer than this many samples, LoRA lr, full lr, epochs, rank, val_ratio, early-stopping patience)
_TIERS = (
    (200, 1e-4, 1e-5, 5, 8, 0.15, 3),
    (1_000, 2e-4, 2e-5, 3, 16, 0.10, 3),
    (10_000, 2e-4, 2e-5, 2, 32, 0.05, None),
    (float("inf"), 1e-4, 1e-5, 1, 64, 0.02, None),
)
AUTO_KEYS = ("training.learning_rate", "training.epochs", "lora.r", "data.val_ratio")


@dataclass(frozen=True)
class Suggestion:
    learning_rate: float
    epochs: int
    lora_r: int
    val_ratio: float
    early_stopping_patience: int | None
    reasons: tuple[str, ...]


def suggest_hyperparameters(n_samples: int, mean_tokens: float, method: str = "lora") -> Suggestion:
    """The rule table above applied to `n_samples` training samples of `mean_tokens` tokens each.

    >>> suggest_hyperparameters(50, 2000, "full").learning_rate, suggest_hyperparameters(50, 2000, "full").epochs
    (1e-05, 4)
    """
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    limit, lora_lr, full_lr, epochs, rank, val_ratio, patience = next(t for t in _TIERS if n_samples < t[0])
    size = f"{n_samples} samples"
    reasons = [f"{size}: {'few samples over-fit fast, so a low rate, a small rank and early stopping' if n_samples < 1000 else 'enough signal for fewer passes and a larger rank'}"]
    lr = full_lr if method == "full" else lora_lr
    if method == "full":
        reasons.append("method full updates every weight: a rate 10× below LoRA's")
    if mean_tokens > 1024:
        epochs = max(1, epochs - 1)
        reasons.append(f"long samples (mean {mean_tokens:.0f} tokens) carry more signal each: one epoch fewer")
    if mean_tokens < 64 and rank > 16:
        rank = 16
        reasons.append(f"short samples (mean {mean_tokens:.0f} tokens): rank 16 is enough")
    if patience:
        reasons.append(f"validation split {val_ratio:.0%} with early stopping (patience {patience}) to stop where validation loss turns")
    return Suggestion(lr, epochs, rank, val_ratio, patience, tuple(reasons))


def auto_keys(cfg: TrainConfig) -> list[str]:
    """The AUTO_KEYS set to `auto` in this config."""
    values = {"training.learning_rate": cfg.training.learning_rate, "training.epochs": cfg.training.epochs,
              "lora.r": cfg.lora.r, "data.val_ratio": cfg.data.val_ratio}
    return [k for k, v in values.items() if v == "auto"]


def apply_auto_hyperparameters(cfg: TrainConfig, n_samples: int, mean_tokens: float) -> TrainConfig:
    """A copy of `cfg` with every `auto` key replaced by the suggestion for this data (logged).

    `data.val_ratio: auto` becomes 0 when validation files are given (they are the validation
    set); early stopping is turned on with the suggested patience when it was unset and a
    validation set will exist.
    """
    keys = auto_keys(cfg)
    if not keys:
        return cfg
    s = suggest_hyperparameters(n_samples, mean_tokens, cfg.method)
    cfg = cfg.model_copy(deep=True)
    picked = {}
    if "training.learning_rate" in keys:
        cfg.training.learning_rate = picked["training.learning_rate"] = s.learning_rate
    if "training.epochs" in keys:
        cfg.training.epochs = picked["training.epochs"] = s.epochs
    if "lora.r" in keys:
        cfg.lora.r = picked["lora.r"] = s.lora_r
    if "data.val_ratio" in keys:
        cfg.data.val_ratio = picked["data.val_ratio"] = 0.0 if cfg.data.validation else s.val_ratio
        if s.early_stopping_patience and cfg.training.early_stopping_patience is None and (cfg.data.validation or cfg.data.val_ratio):
            cfg.training.early_stopping_patience = picked["training.early_stopping_patience"] = s.early_stopping_patience
    log.info("auto hyper-parameters for %d samples (mean %.0f tokens): %s — %s", n_samples, mean_tokens,
             ", ".join(f"{k}={v:g}" for k, v in picked.items()), "; ".join(s.reasons))
    return cfg


def departures(cfg: TrainConfig, s: Suggestion) -> list[str]:
    """Where the (resolved) config strays far from the suggestion: lr or rank off by more than 4×,
    epochs by more than 2×, or no validation set on fewer than 1 000 samples."""
    out = []
    t = cfg.training
    if isinstance(t.learning_rate, float) and not s.learning_rate / 4 <= t.learning_rate <= s.learning_rate * 4:
        out.append(f"training.learning_rate={t.learning_rate:g} (suggested {s.learning_rate:g})")
    if t.max_steps is None and isinstance(t.epochs, (int, float)) and not s.epochs / 2 <= t.epochs <= s.epochs * 2:
        out.append(f"training.epochs={t.epochs:g} (suggested {s.epochs})")
    if cfg.method != "full" and isinstance(cfg.lora.r, int) and not s.lora_r / 4 <= cfg.lora.r <= s.lora_r * 4:
        out.append(f"lora.r={cfg.lora.r} (suggested {s.lora_r})")
    if s.early_stopping_patience and not cfg.data.validation and not cfg.data.val_ratio:
        out.append(f"no validation set (suggested data.val_ratio={s.val_ratio:g} with early stopping)")
    return out


def measure_data(cfg: TrainConfig, max_token_samples: int = 2000, read=None) -> tuple[int, float]:
    """(training samples, mean tokens per sample) of the config's training data, before any
    validation split; tokens counted with the model's tokenizer over the first `max_token_samples`.
    `read` (a `honed.data.dataset.SourceRead`) is the data already read; without it the files are read."""
    import random

    from honed.data.dataset import read_sources
    from honed.model.load import load_tokenizer

    read = read or read_sources(cfg.data)
    train = read.weighted_train(random.Random(cfg.training.seed if isinstance(cfg.training.seed, int) else 0))
    if not train:
        return 0, 0.0
    tokenizer = load_tokenizer(cfg.model)
    chosen = train[:max_token_samples]
    lengths = [sum(len(tokenizer(m.content, add_special_tokens=False)["input_ids"]) for m in c.messages) for c in chosen]
    return len(train), sum(lengths) / len(lengths)


def resolve_data_defaults(cfg: TrainConfig) -> TrainConfig:
    """Measure the data, log the suggestion, warn where the config strays far from it, and fill
    in `auto` keys. Called at the start of training. The files read to measure them are kept with
    the returned config's data section: the training data pipeline takes them from there and reads
    no file a second time (honed.data.dataset.keep_read)."""
    from honed.data.dataset import keep_read, read_sources
    from honed.errors import ConfigError, HonedError

    keys = auto_keys(cfg)
    if getattr(cfg, "objective", "sft") != "sft" and not keys:
        return cfg  # preference pairs are not conversations: nothing to suggest from without `auto` keys
    try:
        read = read_sources(cfg.data)
        n, mean_tokens = measure_data(cfg, read=read)
    except HonedError as err:
        if keys:
            raise ConfigError(f"{', '.join(keys)}: auto needs the training data measured, which failed: {err}") from None
        log.debug("no data-size suggestion: %s", err)  # the data error itself is reported by the data pipeline
        return cfg
    if n == 0:
        return cfg
    s = suggest_hyperparameters(n, mean_tokens, cfg.method)
    log.info("suggested for %d samples (mean %.0f tokens): learning_rate=%g epochs=%d lora.r=%d val_ratio=%g", n, mean_tokens,
             s.learning_rate, s.epochs, s.lora_r, s.val_ratio)
    cfg = apply_auto_hyperparameters(cfg, n, mean_tokens)
    for item in departures(cfg, s):
        log.warning("config strays far from the data-size suggestion: %s; set the key to `auto` to use it", item)
    if getattr(cfg, "objective", "sft") == "sft":  # a preference objective reads its files as pairs, not conversations
        keep_read(cfg.data, read)
    return cfg
