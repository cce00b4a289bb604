"""The `preference:` section of a training config (objectives dpo, orpo, simpo, kto).

>>> PreferenceConfig().beta, PreferenceConfig(loss_type="ipo").loss_type
(0.1, 'ipo')
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreferenceConfig(BaseModel):
    # Unknown keys are errors, as everywhere in honed's configs.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    beta: float = Field(0.1, gt=0, description="DPO/KTO: strength of the pull towards the reference (β); ORPO: weight λ of the "
                                               "odds-ratio term; SimPO: reward scale β (the SimPO paper uses 2.0-2.5)")
    loss_type: Literal["sigmoid", "ipo", "robust"] = Field("sigmoid", description="DPO variant: sigmoid (DPO), ipo, robust")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="DPO sigmoid/robust and SimPO: assumed share of flipped labels (ε)")
    rpo_alpha: float | None = Field(None, ge=0, description="add α × the chosen answer's mean token NLL to each pair's loss (RPO)")
    reference: Literal["auto", "adapter_off", "cache"] = Field(
        "auto", description="DPO/KTO reference model: adapter_off = the base with the LoRA adapter switched off (no second copy); "
        "cache = log-probs of the starting model computed once before training and kept in OUTPUT/reference_logps.safetensors; "
        "auto = adapter_off for a fresh LoRA/QLoRA adapter, cache for method full or lora.init_from")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin γ")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO weight of desirable samples")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO weight of undesirable samples")

    @model_validator(mode="after")
    def _smoothing_fits_the_loss(self) -> "PreferenceConfig":
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("preference.label_smoothing does not apply to loss_type ipo; set it to 0 or use sigmoid/robust")
        return self

    def resolved_reference(self, method: str, init_from: str | None) -> str:
        """adapter_off or cache, for a run's `method` and `lora.init_from` (refusing what cannot work)."""
        if self.reference == "auto":
            return "cache" if method == "full" or init_from else "adapter_off"
        if self.reference == "adapter_off" and method == "full":
            from honed.errors import ConfigError

            raise ConfigError("preference.reference: adapter_off needs a LoRA/QLoRA adapter to switch off; method full trains the "
                              "weights themselves. Use preference.reference: cache (or auto)")
        return self.reference
