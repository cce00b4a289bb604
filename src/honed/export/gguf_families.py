"""What llama.cpp needs to know about each supported family, and the quant types it can make.

Fold GGUF_FAMILIES into model/families.py after merge (one family table for all of honed).

>>> gguf_family("qwen2").arch
'qwen2'
>>> gguf_family("gpt2")
Traceback (most recent call last):
...
honed.export.errors.ExportError: GGUF export does not support model_type 'gpt2'; supported: gemma2, gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen3
"""

from __future__ import annotations

from dataclasses import dataclass

from honed.export.errors import ExportError


@dataclass(frozen=True)
class GgufFamily:
    """One family as llama.cpp sees it.

    permute_qk: llama.cpp's `llama` architecture applies rotary embeddings to interleaved pairs,
    while transformers rotates the two halves of each head; the Q and K rows are reordered so the
    same rotation results (the others use llama.cpp's NEOX rope, which already rotates halves).
    norm_plus_one: Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w.
    end_of_turn: the token a chat turn ends with (an end-of-generation id in every runtime).
    """

    arch: str
    end_of_turn: str
    permute_qk: bool = False
    norm_plus_one: bool = False
    ollama_stops: tuple[str, ...] = ()


# fold into model/families.py after merge
GGUF_FAMILIES: dict[str, GgufFamily] = {
    "llama": GgufFamily("llama", "<|eot_id|>", permute_qk=True, ollama_stops=("<|eot_id|>", "<|end_of_text|>")),
    "mistral": GgufFamily("llama", "</s>", permute_qk=True, ollama_stops=("</s>", "[INST]")),
    "qwen2": GgufFamily("qwen2", "<|im_end|>", ollama_stops=("<|im_end|>", "<|endoftext|>")),
    "qwen3": GgufFamily("qwen3", "<|im_end|>", ollama_stops=("<|im_end|>", "<|endoftext|>")),
    "gemma2": GgufFamily("gemma2", "<end_of_turn>", norm_plus_one=True, ollama_stops=("<end_of_turn>",)),
    "gemma3": GgufFamily("gemma3", "<end_of_turn>", norm_plus_one=True, ollama_stops=("<end_of_turn>",)),
    "gemma3_text": GgufFamily("gemma3", "<end_of_turn>", norm_plus_one=True, ollama_stops=("<end_of_turn>",)),
    "phi3": GgufFamily("phi3", "<|end|>", ollama_stops=("<|end|>", "<|endoftext|>")),
}

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


def gguf_family(model_type: str) -> GgufFamily:
    """The GGUF facts of a transformers model_type, or a clear error naming the supported ones."""
    if model_type not in GGUF_FAMILIES:
        raise ExportError(f"GGUF export does not support model_type '{model_type}'; supported: "
                          f"{', '.join(sorted(GGUF_FAMILIES))}")
    return GGUF_FAMILIES[model_type]


def check_quant(quant: str) -> str:
    """Normalise a --quant value (case-insensitive) or refuse it before any work starts.

    >>> check_quant("Q4_K_M")
    'q4_k_m'
    """
    q = quant.lower()
    if q not in QUANT_TYPES:
        raise ExportError(f"--quant {quant}: not a supported GGUF type; choose one of {', '.join(QUANT_TYPES)}")
    return q
