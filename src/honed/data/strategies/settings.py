"""Typed settings of the training strategies under `data.sampling` (unknown keys are errors).

Only pydantic here: honed.config imports this module, so it must not import the rest of honed.

>>> s = SamplingConfig.model_validate({"balance": {"by": "label", "weights": {"positive": 1, "negative": 1}}})
>>> s.balance.by, s.curriculum
('label', None)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CurriculumConfig(_Strict):
    """Easy → hard: samples sorted by difficulty into `buckets` stages; order shuffled inside a stage."""

    measure: str = Field("length", description="length (trained tokens), loss (a scoring pass of the base model), or meta:KEY")
    buckets: int = Field(3, gt=0, description="difficulty stages; each epoch runs stage 1, then 2, …")
    epochs: int | None = Field(None, gt=0, description="epochs that follow the curriculum; later ones are shuffled (None: all)")
    scorer_model: str | None = Field(None, description="model that scores difficulty for measure=loss (default: the run's base)")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        if v not in ("length", "loss") and not (v.startswith("meta:") and len(v) > 5):
            raise ValueError(f"{v!r}: use length, loss or meta:KEY (e.g. meta:difficulty)")
        return v


class BalanceConfig(_Strict):
    """Over-/under-sample by a meta key so each value gets its share of every epoch."""

    by: str = Field("label", description="meta key to balance on (label, category, …)")
    weights: dict[str, float] | Literal["uniform"] = Field("uniform", description="value → share; 0 drops the value")
    size: int | None = Field(None, gt=0, description="samples per epoch (None: as many as the data has)")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v):
        if isinstance(v, dict):
            if not v or any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
                raise ValueError("weights need at least one value > 0 and none < 0")
        return v


class HardMiningConfig(_Strict):
    """After each epoch, score every sample; the highest-loss ones come back more often next epoch."""

    top_fraction: float = Field(0.2, gt=0, le=1, description="share of samples (by origin) counted as hard")
    factor: int = Field(2, ge=2, description="times a hard sample appears in the next epoch")
    keep_size: bool = Field(True, description="the lowest-loss samples sit out to make room (the step plan stays as planned)")
    start_epoch: int = Field(1, ge=1, description="first epoch that uses the losses of the one before")


class SamplingConfig(_Strict):
    curriculum: CurriculumConfig | None = None
    balance: BalanceConfig | None = None
    hard_mining: HardMiningConfig | None = None
