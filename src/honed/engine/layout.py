"""What the fused path's modules need to know about a model's layout, in one module below them all.

Which model a peft wrapper holds, whether the fused path covers it, which LoRA projections the
fused node can take, which projections read the same input, and the attribute that ties a
projection to its sibling group. `engine.fp8`, `engine.lora`, `engine.grouped`, `engine.layers`
and `engine.fused` all read these; keeping them here (rather than in one of those modules) keeps
the engine's imports one-directional. The family facts come from `honed.model.families`.

>>> sorted(COVERED_MODEL_TYPES)
['llama', 'mistral', 'qwen2', 'qwen3']
>>> SIBLINGS
(('q_proj', 'k_proj', 'v_proj'), ('gate_proj', 'up_proj'))
"""

from __future__ import annotations

import torch

from honed.model.families import FAMILIES, fused_model_types

COVERED_MODEL_TYPES = set(fused_model_types())
# Projections of one parent module that read the same input, in the order the parent calls them:
# those of the families the fused path covers.
SIBLINGS = tuple(dict.fromkeys(g for f in FAMILIES.values() if f.fused for g in f.layout.sibling_groups))
GROUP_ATTR = "_honed_sibling_group"  # the `engine.grouped.SiblingGroup` a projection belongs to, if any


def causal_lm_of(model):
    """The transformers *ForCausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def covers(model) -> str | None:
    """None if the fused path covers this model, else the reason it does not."""
    lm = causal_lm_of(model)
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in COVERED_MODEL_TYPES:
        return f"architecture {model_type!r} is not one of {sorted(COVERED_MODEL_TYPES)}"
    if getattr(config, "final_logit_softcapping", None):
        return "logit soft-capping"
    decoder, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    if decoder is None or not hasattr(decoder, "layers") or not isinstance(head, torch.nn.Linear):
        return "unexpected module layout (no model.layers / plain lm_head)"
    return None


def fusable(module) -> bool:
    """A peft LoRA Linear with a plain (or NF4) base, no dropout, no DoRA/variants, frozen base."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return False
    if type(module) is not LoraLinear and type(module).__name__ not in ("Linear4bit",):
        return False
    if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
        return False
    if getattr(module, "lora_variant", None) or any(getattr(module, "use_dora", {}).values()):
        return False
    if any(not isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
        return False
    base = module.base_layer
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    return isinstance(base, torch.nn.Linear) or hasattr(base.weight, "quant_state")
