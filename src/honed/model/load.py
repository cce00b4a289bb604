"""Load a causal LM and its tokenizer safely: safetensors only, no remote code unless asked.

>>> model, info = load_model(ModelConfig(name_or_path="path/to/model"), device=pick_device())  # doctest: +SKIP
>>> tokenizer = load_tokenizer(ModelConfig(name_or_path="path/to/model"))                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from honed.config import ModelConfig, QuantizationSettings
from honed.errors import ModelError
from honed.model.families import find_family

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU; a named GPU must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"training.device={name!r} but no CUDA GPU is visible; use device: cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` means bf16 on a GPU that supports it, else fp32 (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def check_model_source(name: str) -> None:
    """A name written as a path must exist: otherwise the hub client reports a baffling repo-id error.

    Hub ids are `org/name`; anything absolute, relative (`./`, `../`, `~`) or deeper is a folder.

    >>> check_model_source("Qwen/Qwen2.5-0.5B-Instruct")
    >>> check_model_source("/no/such/model")
    Traceback (most recent call last):
    ...
    honed.errors.ModelError: model folder not found: /no/such/model (a local folder, or a hub id like org/name where a network exists)
    """
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path and not Path(name).expanduser().exists():
        raise ModelError(f"model folder not found: {name} (a local folder, or a hub id like org/name where a network exists)")


def check_weights_are_safe(path: str, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints unless the user opted in: unpickling can run arbitrary code."""
    folder = Path(path)
    if not folder.is_dir() or allow_pickle:
        return
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(
            f"{path}: holds only pickle weights ({', '.join(sorted(pickles)[:3])}); loading them can run arbitrary code. "
            "Convert them to safetensors, or set model.allow_pickle: true if you trust the source."
        )


def model_type_of(path: str, cfg: ModelConfig) -> tuple[str, dict | None]:
    """The architecture name and any pre-quantization of a checkpoint (e.g. a `*-bnb-4bit` model)."""
    from transformers import AutoConfig

    check_model_source(path)
    try:
        hf_config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise ModelError(f"cannot load model config for {path!r}: {err}. Give a local model folder, or a hub id where a network exists.") from None
    except ValueError as err:
        raise ModelError(f"{path!r}: {err} (set model.trust_remote_code: true only if you trust this model's code)") from None
    return hf_config.model_type, getattr(hf_config, "quantization_config", None)


def bnb_config(q: QuantizationSettings):
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("QLoRA needs bitsandbytes: pip install 'honed[gpu]' (a CUDA GPU is required)") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def load_tokenizer(cfg: ModelConfig):
    """The model's tokenizer, with a pad token (eos, or unk) when it has none."""
    from transformers import AutoTokenizer

    check_model_source(cfg.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of {cfg.name_or_path!r}: {err}") from None
    if tok.pad_token_id is None:
        # Padding only fills masked positions, so any existing token serves.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(cfg: ModelConfig, *, device: torch.device, quantization: QuantizationSettings | None = None, for_training: bool = True):
    """Load a causal LM for training or inference.

    `quantization` asks for 4-bit NF4 (QLoRA); a checkpoint that is already quantized
    (`*-bnb-4bit`) is loaded as it is. Returns (model, info) where info records the path taken.
    """
    from transformers import AutoModelForCausalLM

    check_weights_are_safe(cfg.name_or_path, cfg.allow_pickle)
    model_type, prequant = model_type_of(cfg.name_or_path, cfg)
    if find_family(model_type) is None:
        log.info("architecture %r is not one of honed's tested families; using the plain transformers path", model_type)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs = dict(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype,
        use_safetensors=None if cfg.allow_pickle else True,
        # No layers swapped for kernels fetched from the Hub (transformers' default where the `kernels`
        # package is installed): that is code from outside this install, and at every train()/eval()
        # switch it puts back the forwards that honed's fused path patches (engine.fused).
        use_kernels=False,
    )
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantized = bool(prequant) or quantization is not None
    if quantized and device.type != "cuda":
        raise ModelError(f"{cfg.name_or_path}: 4-bit (QLoRA / bnb-4bit) models need a CUDA GPU; none is in use here")
    if quantization is not None and not prequant:
        kwargs["quantization_config"] = bnb_config(quantization)
    if quantized:
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    except OSError as err:
        raise ModelError(f"cannot load model weights from {cfg.name_or_path!r}: {err}") from None
    except ValueError as err:
        raise ModelError(f"{cfg.name_or_path!r}: {err}") from None
    if not quantized:
        model.to(device)
    model.config.use_cache = not for_training
    info = {"model_type": model_type, "dtype": str(dtype).removeprefix("torch."), "quantized": quantized, "prequantized": bool(prequant)}
    return model, info
