"""The quant types honed's GGUF export makes, and the GGUF facts of a model_type.

The facts themselves (llama.cpp's architecture, Q/K reordering, Gemma's norm, Ollama stops) are a
field of each family in `honed.model.families`, the one family table of honed.

>>> gguf_family("qwen2").gguf.arch
'qwen2'
>>> gguf_family("gpt2")
Traceback (most recent call last):
...
honed.export.errors.ExportError: GGUF export does not support model_type 'gpt2'; supported: gemma2, gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen3
"""

from __future__ import annotations

from honed.export.errors import ExportError
from honed.model.families import Family, find_family, gguf_model_types

# --quant value → (llama.cpp ftype constant name in llama_cpp, written directly by honed?)
QUANT_TYPES: dict[str, str] = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
UNQUANTISED = ("f16", "bf16")


def gguf_family(model_type: str) -> Family:
    """The family of a transformers model_type, checked to have GGUF facts (`family.gguf`), or a clear
    error naming the supported model_types."""
    family = find_family(model_type)
    if family is None or family.gguf is None:
        raise ExportError(f"GGUF export does not support model_type '{model_type}'; supported: "
                          f"{', '.join(sorted(gguf_model_types()))}")
    return family


def check_quant(quant: str) -> str:
    """Normalise a --quant value (case-insensitive) or refuse it before any work starts.

    >>> check_quant("Q4_K_M")
    'q4_k_m'
    """
    q = quant.lower()
    if q not in QUANT_TYPES:
        raise ExportError(f"--quant {quant}: not a supported GGUF type; choose one of {', '.join(QUANT_TYPES)}")
    return q
