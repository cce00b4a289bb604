"""The objective seam: what a training run optimises, apart from how it trains (`method`).

A run's config names its objective (`objective: sft|dpo|orpo|kto|simpo`, default `sft`); the
recipe asks `get_objective(cfg)` once and then calls only the four members below, so a new
objective is one module that registers itself, not a change to the loop.

One optimizer step is `gradient_accumulation_steps` micro-batches. Each micro-batch's
`ObjectiveLoss.loss_sum` is divided by the summed `weight(batch)` of the whole group before its
backward pass, so the step's loss is sum(loss_sum) / sum(weight): for SFT, every trained token weighs
the same however the samples fell into micro-batches; for a preference objective, every pair.

>>> get_objective_by_name("sft").name
'sft'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, get_args

import torch

from honed.config import TrainConfig
from honed.errors import ConfigError

# Every name the config accepts (TrainConfig.objective); the registry says which are available.
OBJECTIVE_NAMES: tuple[str, ...] = get_args(TrainConfig.model_fields["objective"].annotation)


@dataclass
class ObjectiveLoss:
    """One micro-batch's loss, not yet averaged."""

    loss_sum: torch.Tensor  # summed over the micro-batch; the step divides by the group's total `weight`
    weight: int  # what the loss is averaged over: trained tokens (SFT) or pairs/samples (preference)
    metrics: dict[str, float] = field(default_factory=dict)  # summed per micro-batch, e.g. {"rewards/chosen": ...}


@dataclass
class ObjectiveData:
    """What an objective trains and validates on, built once per run (`Objective.build_data`)."""

    train: list  # the samples `collate` takes
    val: list
    report: Any  # a data report with summary() -> str and to_dict() -> dict (run_info.json keeps it)
    epochs: Any  # honed.data.epochs.EpochData: each epoch's samples and their order


class Objective(Protocol):
    """What the recipe needs from an objective (see the module docstring)."""

    name: str

    def build_data(self, cfg, tokenizer, template) -> ObjectiveData: ...

    def collate(self, samples: list, rows: list[list[int]], *, pad_id: int, packing: bool, padding_free: bool) -> dict[str, torch.Tensor]:
        """One micro-batch: `rows` lists, per row, the indices into `samples` it holds."""
        ...

    def weight(self, batch: dict[str, torch.Tensor]) -> int:
        """What this micro-batch adds to the step's divisor (known before the forward pass)."""
        ...

    def loss(self, path, model, batch: dict[str, torch.Tensor]) -> ObjectiveLoss:
        """Forward through the training path; `path.loss_sum` or `path.token_logps` do the model work."""
        ...

    def sample_length(self, sample) -> int:
        """Tokens a sample takes in a row, for planning micro-batches (`data.packing.plan_batches`)."""
        ...

    def token_ids(self, sample) -> list[int]:
        """Every token id the sample feeds the model (checked against the embeddings before training)."""
        ...


_REGISTRY: dict[str, Callable[[], Objective]] = {}


def register_objective(name: str, factory: Callable[[], Objective]) -> None:
    """Make `objective: name` available; `factory()` builds the objective for one run."""
    if name not in OBJECTIVE_NAMES:
        raise ValueError(f"objective {name!r} is not one of {OBJECTIVE_NAMES} (add it to OBJECTIVE_NAMES and config.TrainConfig.objective)")
    _REGISTRY[name] = factory


def _load_builtin() -> None:
    """Import the modules that register objectives (each registers itself on import)."""
    import importlib

    for module in ("honed.train.objectives.sft", "honed.train.objectives.preference", "honed.train.objectives.kto"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the module exists but something it imports is missing: say so
                raise


def get_objective_by_name(name: str) -> Objective:
    """The objective registered as `name`; a ConfigError naming the key when none is."""
    _load_builtin()
    factory = _REGISTRY.get(name)
    if factory is None:
        available = ", ".join(sorted(_REGISTRY)) or "none"
        raise ConfigError(f"objective: objective {name!r} is not available in this version of honed (available: {available}); set objective: sft")
    return factory()


def get_objective(cfg) -> Objective:
    """The objective a TrainConfig asks for (`objective:` key, default sft)."""
    return get_objective_by_name(getattr(cfg, "objective", "sft"))
