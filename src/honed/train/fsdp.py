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


def _mesh_device_type(model: nn.Module) -> str:
    """Where FSDP2 keeps the shards and runs the collectives: CUDA for a model on a GPU or a process
    group with NCCL in it (`nccl`, or torch's default pair `cuda:nccl,cpu:gloo`), else the CPU."""
    import torch.distributed as dist

    on_gpu = any(p.device.type == "cuda" for p in model.parameters())
    return "cuda" if on_gpu or "nccl" in str(dist.get_backend()) else "cpu"


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
    mesh = init_device_mesh(_mesh_device_type(model), (dist.get_world_size(),))
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype) if cfg.fsdp_mixed_precision \
        else MixedPrecisionPolicy()
    # Pinned host memory makes the offload copies asynchronous; it exists only beside a CUDA device.
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.fsdp_cpu_offload else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mixed, offload_policy=offload)
    for layer in reversed(layers):  # innermost first, should one listed block hold another
        fully_shard(layer, reshard_after_forward=cfg.fsdp_reshard_after_forward, **options)
    # The root's weights (embeddings, LM head) are needed first in backward: keeping them gathered
    # after forward saves one all-gather (FSDP2's own default for the root).
    fully_shard(model, reshard_after_forward=False, **options)
    log.info("FSDP2: %d decoder layers and the root sharded over %d ranks (mixed precision %s, CPU offload %s)",
             len(layers), dist.get_world_size(), cfg.fsdp_mixed_precision, cfg.fsdp_cpu_offload)
    return model


# ---- loading on rank 0 only -------------------------------------------------------------------------


def build_skeleton(model_cfg, device: torch.device):
    """(model, info): the architecture `model_cfg` names, with every weight on the meta device (no
    storage, nothing read but config.json), in the dtype `load_model` would give it on `device`. What
    the ranks other than 0 build under FSDP when rank 0 alone reads the weights; `info` is the one
    `honed.model.load.load_model` returns."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from honed.model.load import model_type_of, resolve_dtype

    dtype = resolve_dtype(model_cfg.dtype, device)
    model_type, prequant = model_type_of(model_cfg.name_or_path, model_cfg)
    config = AutoConfig.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.config.use_cache = False
    return model, {"model_type": model_type, "dtype": str(dtype).removeprefix("torch."), "quantized": bool(prequant),
                   "prequantized": bool(prequant)}


def _non_persistent_buffers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(full name, module, name) of each buffer the state dict leaves out (rotary `inv_freq` tables):
    loading a state dict never fills them, so a rank that built the model on meta must get them otherwise.
    In registration order (the module's buffer dict), never the set's: a set of strings iterates in a
    per-process hash order, and every rank must list them alike, since each is broadcast in turn."""
    return [(f"{prefix}.{name}" if prefix else name, module, name) for prefix, module in model.named_modules()
            for name, buffer in module._buffers.items() if name in module._non_persistent_buffers_set and buffer is not None]


def _tied_names(model: nn.Module) -> list[list[str]]:
    """The names of each parameter registered under several names (an LM head tied to the embeddings)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _retie(model: nn.Module, tied: list[list[str]]) -> None:
    for first, *others in tied:
        shared = model.get_parameter(first)
        for name in others:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, shared)


def shard_from_rank0(model: nn.Module, shard, *, compute_device: torch.device, cpu_offload: bool) -> nn.Module:
    """Shard `model` with `shard(model)` (apply_fsdp) and fill every rank's shards from rank 0's weights.

    Rank 0 passes the model it loaded (on the CPU: the one copy in host memory); the other ranks pass
    a `build_skeleton` model with the same adapters. Rank 0 keeps its weights aside and empties its
    model too, so that every rank shards the same meta-device structure; the shards then get storage
    (on the CPU when `cpu_offload`, else on `compute_device`) and rank 0 broadcasts each weight, every
    rank keeping its own piece (`set_model_state_dict(..., broadcast_from_rank0=True)`). Buffers the
    state dict leaves out (rotary tables) are broadcast from rank 0 as they are, and so is rank 0's
    random state: LoRA's initialisation drew from it on rank 0 only, and every rank must go on as if
    it had built the model itself (dropout draws the same masks as when every rank loads)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    main = dist.get_rank() == 0
    state, buffers = {}, {}
    if main:
        state = model.state_dict()  # views of the loaded weights: they stay alive after the model is emptied
        buffers = {full: module._buffers[name].detach().clone() for full, module, name in _non_persistent_buffers(model)}
        tied = _tied_names(model)
        model.to_empty(device="meta")  # gives each module its own new parameter: tied weights come apart ...
        _retie(model, tied)  # ... and are shared again, as on the ranks that built a skeleton
    model = shard(model)
    model.to_empty(device="cpu" if cpu_offload else compute_device)
    # strict (the default): a weight of the model that rank 0's state dict lacks is an error, not garbage
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del state
    if cpu_offload:
        # FSDP2 keeps the offloaded shards on the CPU, and the buffers beside the compute. Moved only
        # now: torch's state-dict loader refuses a model whose state-dict tensors lie on several devices
        # ("Multiple devices found"), which a persistent buffer on the GPU beside CPU shards would be.
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(compute_device)
    with torch.no_grad():
        for full, module, name in _non_persistent_buffers(model):
            if main:
                module._buffers[name].copy_(buffers[full])
            dist.broadcast(module._buffers[name], src=0)
    rng = [torch.get_rng_state(), torch.cuda.get_rng_state(compute_device) if compute_device.type == "cuda" else None]
    dist.broadcast_object_list(rng, src=0)
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1], compute_device)
    log.info("FSDP2: rank 0 read the weights and sent each rank its shards (%d non-persistent buffers copied)", len(buffers))
    return model
