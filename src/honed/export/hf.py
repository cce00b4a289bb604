"""Merged Hugging Face weights: the LoRA folded into its base, saved as 16-bit safetensors.

The folder loads in transformers, vLLM and llama.cpp's converter alike, and stops where
`honed chat` stops: the family's end-of-turn token is among generation_config's eos ids. From a
QLoRA run the adapter was trained over the NF4-rounded base, so that base is dequantised first
and the adapter merged into it (on a CUDA GPU with bitsandbytes); `qlora_base="original"` merges
into the 16-bit weights instead.

>>> from honed.model.reference import resolve_model_reference
>>> merge_to_folder(resolve_model_reference("runs/lab"), "exports/lab-hf")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from honed.export.errors import ExportError
from honed.model.reference import ModelRef

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "fp16": torch.float16, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def run_config(ref: ModelRef) -> dict:
    """The resolved config.yaml of the run the reference came from ({} when there is none)."""
    if not ref.run_dir or not (Path(ref.run_dir) / "config.yaml").is_file():
        return {}
    import yaml

    return yaml.safe_load((Path(ref.run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}


def base_dtype(base: str) -> torch.dtype:
    """The 16-bit dtype to save in: the base's own when it is 16-bit, else bf16."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def _dequantised_qlora_base(base: str, quantization: dict, dtype_name: str = "auto"):
    # The adapter learned to correct the NF4-rounded weights; merging into them reproduces the
    # trained model exactly, merging into the original 16-bit weights only approximately.
    if not torch.cuda.is_available():
        raise ExportError(f"{base}: this is a QLoRA adapter; merging it into the dequantised NF4 base needs a CUDA GPU "
                          "with bitsandbytes. Run the export there, or pass --qlora-base original to merge into the "
                          "16-bit base weights (close to, not exactly, the trained model)")
    from transformers import AutoModelForCausalLM

    from honed.config import QuantizationSettings
    from honed.model.load import bnb_config, resolve_dtype

    settings = QuantizationSettings(**{k: v for k, v in (quantization or {}).items() if k in QuantizationSettings.model_fields})
    # Quantise from the same dtype training loaded the base in, so every NF4 code is the same.
    dtype = resolve_dtype(dtype_name, torch.device("cuda"))
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb_config(settings), device_map={"": 0},
                                                 dtype=dtype, use_safetensors=True, use_kernels=False)  # no Hub kernels (model.load)
    model = model.dequantize()
    return model.to("cpu", torch.float32)


def load_trained(ref: ModelRef, *, merge: bool, qlora_base: str = "dequantized", trust_remote_code: bool = False):
    """The trained model in fp32 on the CPU: base + adapter, merged into one network or kept apart."""
    from transformers import AutoConfig, AutoModelForCausalLM

    method = run_config(ref).get("method")
    prequantized = getattr(AutoConfig.from_pretrained(ref.base, trust_remote_code=trust_remote_code),
                           "quantization_config", None)
    if ref.adapter and (prequantized or (method == "qlora" and qlora_base == "dequantized")):
        run = run_config(ref)
        model = _dequantised_qlora_base(ref.base, run.get("quantization") or {}, (run.get("model") or {}).get("dtype", "auto"))
    elif prequantized:
        raise ExportError(f"{ref.base}: a pre-quantised checkpoint; export the 16-bit model it was made from")
    else:
        model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32, use_safetensors=True, use_kernels=False,
                                                     trust_remote_code=trust_remote_code)
    if ref.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, ref.adapter)
        if merge:
            model = model.merge_and_unload()
    return model.eval()


def tokenizer_folder(ref: ModelRef) -> str:
    """The adapter's tokenizer when the run saved one (it may add a pad token), else the base's."""
    if ref.adapter and (Path(ref.adapter) / "tokenizer_config.json").is_file():
        return ref.adapter
    return ref.base


def stop_token_ids(tokenizer, model_type: str, known: list[int] | int | None = None) -> list[int]:
    """eos, the ids the model already stops at (`known`), the family's end-of-turn token and every
    single-token end marker of the chat template: what `honed chat` stops at."""
    from honed.data.templates import get_template
    from honed.model.families import find_family

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [known] if isinstance(known, int) else list(known or [])
    family = find_family(model_type)
    if family and family.end_of_turn[0] in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids(family.end_of_turn[0]))
    for text in get_template("auto", tokenizer, model_type).stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
    return list(dict.fromkeys(ids))


def save_hf(model, tokenizer, folder: Path, dtype: torch.dtype) -> None:
    """Weights in `dtype` as safetensors, tokenizer + chat template, generation config with the stops."""
    from transformers import GenerationConfig

    model = model.to(dtype)
    model.config.dtype = dtype
    gen = model.generation_config if model.generation_config is not None else GenerationConfig()
    stops = stop_token_ids(tokenizer, model.config.model_type, gen.eos_token_id)
    gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    gen.bos_token_id = tokenizer.bos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model.generation_config = gen
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg["eos_token_id"] = gen.eos_token_id  # some runtimes (vLLM's older paths) read stops from here
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")


def merge_to_folder(ref: ModelRef, folder: str | Path, *, dtype: str | None = None, qlora_base: str = "dequantized",
                    trust_remote_code: bool = False) -> Path:
    """Merge `ref`'s adapter into its base and save the result into `folder` in 16 bit."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    target = DTYPES[dtype] if dtype else base_dtype(ref.base)
    model = load_trained(ref, merge=True, qlora_base=qlora_base, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(ref), trust_remote_code=trust_remote_code)
    folder.mkdir(parents=True, exist_ok=True)
    save_hf(model, tokenizer, folder, target)
    return folder
