"""LoRA adapters, always in peft's format so they load anywhere in the ecosystem.

>>> model = apply_lora(model, LoraSettings(r=8))  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from honed.config import LoraSettings


def apply_lora(model, settings: LoraSettings, *, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap a model with LoRA adapters (fresh, or `settings.init_from` to continue one); only they train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Casts norms to fp32 and enables input grads so checkpointed 4-bit layers backpropagate.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if settings.init_from:
        return _adapter_weights_in_fp32(load_adapter(model, settings.init_from, trainable=True))
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        use_rslora=settings.use_rslora,
        modules_to_save=settings.modules_to_save,
        task_type="CAUSAL_LM",
    )
    return _adapter_weights_in_fp32(get_peft_model(model, lora))


def _adapter_weights_in_fp32(model):
    # Adapter weights train in fp32 even on a bf16 base: tiny updates vanish in bf16.
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def load_adapter(model, adapter_dir: str, *, trainable: bool = False):
    """Attach a saved peft adapter to a loaded base model."""
    from pathlib import Path

    from peft import PeftModel

    from honed.errors import ConfigError

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
