"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for runs under torchrun with `distributed.strategy: fsdp`.

Each decoder layer becomes one FSDP unit (its weights all-gathered just before it runs and freed
after), then the root takes what is left (embeddings, final norm, LM head). Weights, gradients and
optimizer state are sharded across the ranks, so a model that does not fit one card trains on many.

It works for full fine-tuning and for LoRA: FSDP2 keeps every parameter its own sharded DTensor, so
a unit may hold frozen base weights and trainable adapters together. The frozen ones are gathered
for compute and never reduced; only the trainable ones must share one dtype (peft's adapters are
fp32 in honed, whatever the base's dtype). A bitsandbytes 4-bit base cannot be sharded this way
(see `fsdp_unsupported_reason`).

Activation checkpointing stays the model's own (`model.gradient_checkpointing_enable(
gradient_checkpointing_kwargs={"use_reentrant": False})`): the recompute reruns the layer's forward,
FSDP's hooks included, which gather the layer's weights again.

>>> model = apply_fsdp(model, cfg.distributed, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# Parameter classes of bitsandbytes' quantized weights. FSDP2 turns each parameter into a plain
# DTensor shard, dropping the `quant_state` such a class carries, unless the class implements FSDP2's
# tensor-subclass all-gather protocol (`fsdp_pre_all_gather`).
_QUANTIZED_PARAM_CLASSES = ("Params4bit", "Int8Params")


def _quantized_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if type(p).__name__ in _QUANTIZED_PARAM_CLASSES]


def fsdp_unsupported_reason(model: nn.Module, cfg=None) -> str | None:
    """Why FSDP2 cannot shard `model`, as a message for the user; None when it can.

    A bitsandbytes 4-bit (or 8-bit) base is refused unless its parameter class implements FSDP2's
    all-gather extension (`fsdp_pre_all_gather`), which keeps the quantization state through sharding.
    `cfg` (a TrainConfig) only refines the advice.

    >>> fsdp_unsupported_reason(torch.nn.Linear(2, 2)) is None
    True
    """
    quantized = _quantized_params(model)
    unshardable = [(n, p) for n, p in quantized if not hasattr(type(p), "fsdp_pre_all_gather")]
    if not unshardable:
        return None
    name, param = unshardable[0]
    method = getattr(cfg, "method", None)
    advice = ("use distributed.strategy: ddp (each rank holds the small 4-bit base and trains its adapters; "
              "gradients are all-reduced), or method: lora on a bf16 base with strategy: fsdp")
    if method == "full":
        advice = "full fine-tuning needs an unquantized base: drop the 4-bit quantization"
    return (f"distributed.strategy: fsdp cannot shard this model: its base is quantized by bitsandbytes "
            f"({type(param).__name__}, e.g. {name}), and FSDP2 would drop the quantization state when it splits "
            f"the weights across ranks; {advice}")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers model (or of a peft model around one), in order.

    They are the modules whose class transformers lists in `_no_split_modules` (the blocks it never
    splits across devices); a model without that list falls back to the children of its `layers`
    ModuleList.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, nn.ModuleList):
            return list(module)
    return []


def _check_trainable_dtypes(model: nn.Module, layers: list[nn.Module]) -> None:
    """FSDP2 reduces one unit's gradients in one collective, so its trainable weights must share a
    dtype; say which ones differ now, not as an AssertionError at the first forward."""
    from honed.errors import ModelError

    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    units = [(f"decoder layer {i}", list(layer.named_parameters())) for i, layer in enumerate(layers)]
    units.append(("the root (embeddings, norm, head)", [(n, p) for n, p in model.named_parameters() if id(p) not in in_layers]))
    for unit, params in units:
        dtypes = {}
        for name, p in params:
            if p.requires_grad:
                dtypes.setdefault(p.dtype, name)
        if len(dtypes) > 1:
            found = ", ".join(f"{name} is {str(dtype).removeprefix('torch.')}" for dtype, name in dtypes.items())
            raise ModelError(f"distributed.strategy: fsdp needs the trainable weights of one unit in one dtype, but in "
                             f"{unit} {found}; load the model in one dtype (model.dtype) or use distributed.strategy: ddp")


def _mesh_device_type() -> str:
    # The mesh's device type picks where FSDP2 keeps the shards and runs the collectives: nccl → cuda.
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def apply_fsdp(model: nn.Module, cfg, *, param_dtype: torch.dtype | None, reduce_dtype: torch.dtype | None) -> nn.Module:
    """Shard `model` with FSDP2 over every rank of the default process group; returns it (changed in place).

    `cfg` is the `distributed:` section (DistributedConfig): `fsdp_mixed_precision` (compute in
    `param_dtype`, reduce gradients in `reduce_dtype`; None keeps the weights' own dtype),
    `fsdp_cpu_offload` (shards, gradients and optimizer state in host memory) and
    `fsdp_reshard_after_forward`. Build the optimizer after this call, on `model.parameters()`.
    Needs `torch.distributed` initialised (torchrun); a model FSDP cannot shard is a ModelError.

    >>> model = apply_fsdp(model, cfg.distributed, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)  # doctest: +SKIP
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from honed.errors import ModelError

    if not dist.is_available() or not dist.is_initialized():
        raise ModelError("distributed.strategy: fsdp needs a process group: launch with torchrun "
                         "(torchrun --nproc-per-node N -m honed train CONFIG) or honed train CONFIG --nproc-per-node N")
    reason = fsdp_unsupported_reason(model)
    if reason:
        raise ModelError(reason)
    layers = decoder_layers(model)
    if not layers:
        raise ModelError(f"distributed.strategy: fsdp found no decoder layers in {type(model).__name__} (no "
                         "_no_split_modules and no `layers` list) to shard one by one; use distributed.strategy: ddp")
    _check_trainable_dtypes(model, layers)
    mesh = init_device_mesh(_mesh_device_type(), (dist.get_world_size(),))
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype) if cfg.fsdp_mixed_precision \
        else MixedPrecisionPolicy()
    # Pinned host memory makes the offload copies asynchronous; it exists only beside a CUDA device.
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.fsdp_cpu_offload else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mixed, offload_policy=offload)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=cfg.fsdp_reshard_after_forward, **options)
    # The root's weights (embeddings, LM head) are needed first in backward: keeping them gathered
    # after forward saves one all-gather (FSDP2's own default for the root).
    fully_shard(model, reshard_after_forward=False, **options)
    log.info("FSDP2: %d decoder layers and the root sharded over %d ranks (mixed precision %s, CPU offload %s)",
             len(layers), dist.get_world_size(), cfg.fsdp_mixed_precision, cfg.fsdp_cpu_offload)
    return model
