"""The model families honed supports, as data: one frozen `Family` row each, read by every layer.

A row says which `model_type` values (config.json) belong to the family, which built-in chat
template renders it (`honed.data.templates`), the tokens a generation stops at, whether honed's
fused CUDA training path covers it (`honed.engine`), the names of its decoder's parts, the
tokenizer facts `honed.testing.tiny` copies into a random tiny model of it, and how llama.cpp's GGUF
format sees it (`honed.export`). Adding a family is
adding a row here (and its template, if it brings a new format).

This module imports nothing else from honed but the error tree, so the lowest layers may read it.

>>> family_of("qwen2").template, family_of("qwen2").end_of_turn[0]
('chatml', '<|im_end|>')
>>> sorted(fused_model_types())
['llama', 'mistral', 'qwen2', 'qwen3']
"""

from __future__ import annotations

from dataclasses import dataclass

from honed.errors import ModelError


@dataclass(frozen=True)
class DecoderLayout:
    """Attribute names of a decoder layer's parts, as transformers names them for the family."""

    attention: str = "self_attn"
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # projections that read the same input, in call order
    out: str = "o_proj"
    mlp: str = "mlp"
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    down: str = "down_proj"
    # Per-head RMSNorms on q and k (Qwen3): each keeps its input, a view of the joint q/k/v output, so
    # that whole output stays for backward (the fused path's memory plan counts it).
    qk_norms: tuple[str, ...] = ()

    @property
    def sibling_groups(self) -> tuple[tuple[str, ...], ...]:
        """Groups of projections that read one input (the fused path runs each group as one node)."""
        return tuple(group for group in (self.qkv, self.gate_up) if len(group) > 1)


LLAMA_LAYOUT = DecoderLayout()
QWEN3_LAYOUT = DecoderLayout(qk_norms=("q_norm", "k_norm"))
# Phi-3 stores q/k/v and gate/up as one matrix each.
PHI3_LAYOUT = DecoderLayout(qkv=("qkv_proj",), gate_up=("gate_up_proj",))


@dataclass(frozen=True)
class GgufFacts:
    """How llama.cpp's GGUF format sees a family (`honed export --format gguf|ollama` reads it).

    arch: llama.cpp's architecture name.
    permute_qk: llama.cpp's `llama` architecture applies rotary embeddings to interleaved pairs,
    while transformers rotates the two halves of each head; the Q and K rows are reordered so the
    same rotation results (the others use llama.cpp's NEOX rope, which already rotates halves).
    norm_plus_one: Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w.
    ollama_stops: the stop strings an Ollama Modelfile lists besides the chat template's own.
    """

    arch: str
    permute_qk: bool = False
    norm_plus_one: bool = False
    ollama_stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """One family. Token fields are the real tokenizer's (a tiny test model copies them)."""

    name: str  # honed's name for it (`build_tiny_model(name, ...)`)
    title: str  # how people write it
    model_types: tuple[str, ...]  # config.json `model_type` values
    template: str  # built-in chat template for tokenizers without one
    end_of_turn: tuple[str, ...]  # generation stops at any; the first ends an assistant turn
    fused: bool  # honed's fused CUDA training path covers it
    config_class: str  # transformers config class of the text model (imported lazily)
    special: tuple[str, ...]  # special tokens, in id order (a tiny tokenizer gives them ids 0..n-1)
    bos: str | None
    eos: str
    pad: str | None  # None where the official tokenizer has no pad token (Llama 3, Mistral)
    unk: str | None = None
    plain: tuple[str, ...] = ()  # added tokens that are not special (kept by skip_special_tokens)
    adds_bos: bool = False  # the tokenizer prepends BOS on its own
    pretokenizer: str = "llama3"  # the split rule of the real tokenizer: llama3, or qwen (every digit apart)
    tie_embeddings: bool = False
    layout: DecoderLayout = LLAMA_LAYOUT
    # Config kwargs a tiny model of the family sets (None: the tiny model's head size).
    tiny_config: tuple[tuple[str, object], ...] = ()
    gguf: GgufFacts | None = None  # None: GGUF export does not support the family

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return self.special + self.plain


_QWEN = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_GEMMA = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
_GEMMA_TINY = (("head_dim", None), ("query_pre_attn_scalar", None), ("sliding_window", 256))
_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")


def _gemma_gguf(arch: str) -> GgufFacts:
    return GgufFacts(arch, norm_plus_one=True, ollama_stops=("<end_of_turn>",))


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama3", "Llama 3", ("llama",), "llama3", ("<|eot_id|>", "<|end_of_text|>"), fused=True,
           config_class="LlamaConfig",
           special=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|finetune_right_pad_id|>"),
           bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, adds_bos=True,
           gguf=GgufFacts("llama", permute_qk=True, ollama_stops=("<|eot_id|>", "<|end_of_text|>"))),
    Family("qwen2", "Qwen2 / Qwen2.5", ("qwen2",), "chatml", ("<|im_end|>", "<|endoftext|>"), fused=True,
           config_class="Qwen2Config", special=_QWEN, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
           plain=("<think>", "</think>"), tie_embeddings=True, pretokenizer="qwen",
           gguf=GgufFacts("qwen2", ollama_stops=_QWEN_STOPS)),
    Family("qwen3", "Qwen3", ("qwen3",), "qwen3", ("<|im_end|>", "<|endoftext|>"), fused=True,
           config_class="Qwen3Config", special=_QWEN, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
           plain=("<think>", "</think>"), tie_embeddings=True, pretokenizer="qwen", tiny_config=(("head_dim", None),),
           layout=QWEN3_LAYOUT, gguf=GgufFacts("qwen3", ollama_stops=_QWEN_STOPS)),
    Family("mistral", "Mistral", ("mistral",), "mistral", ("</s>",), fused=True,
           config_class="MistralConfig", special=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
           bos="<s>", eos="</s>", pad=None, unk="<unk>", adds_bos=True,
           tiny_config=(("sliding_window", None), ("head_dim", None)),
           gguf=GgufFacts("llama", permute_qk=True, ollama_stops=("</s>", "[INST]"))),
    Family("gemma2", "Gemma 2", ("gemma2",), "gemma", ("<end_of_turn>", "<eos>"), fused=False,
           config_class="Gemma2Config", special=_GEMMA, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
           adds_bos=True, tie_embeddings=True, tiny_config=_GEMMA_TINY, gguf=_gemma_gguf("gemma2")),
    Family("gemma3", "Gemma 3", ("gemma3", "gemma3_text"), "gemma", ("<end_of_turn>", "<eos>"), fused=False,
           config_class="Gemma3TextConfig", special=_GEMMA, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
           adds_bos=True, tie_embeddings=True, tiny_config=_GEMMA_TINY, gguf=_gemma_gguf("gemma3")),
    Family("phi3", "Phi-3", ("phi3",), "phi3", ("<|end|>", "<|endoftext|>"), fused=False,
           config_class="Phi3Config",
           special=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
           bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", layout=PHI3_LAYOUT,
           gguf=GgufFacts("phi3", ollama_stops=("<|end|>", "<|endoftext|>"))),
]}

_BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}


def find_family(model_type: str | None) -> Family | None:
    """The family a config.json `model_type` belongs to, or None when honed has no row for it.

    >>> find_family("gemma3_text").name, find_family("gpt2")
    ('gemma3', None)
    """
    return _BY_MODEL_TYPE.get(model_type or "")


def family_of(model_type: str | None) -> Family:
    """Like `find_family`, but an unknown model_type is a ModelError naming the supported ones.

    >>> family_of("llama").end_of_turn[0]
    '<|eot_id|>'
    """
    found = find_family(model_type)
    if found is None:
        raise ModelError(f"model_type {model_type!r} is not one of honed's model families; supported: "
                         f"{', '.join(sorted(_BY_MODEL_TYPE))} (see 'Supported model families' in the README)")
    return found


def get_family(name: str) -> Family:
    """A family by honed's name for it (`llama3`, `qwen2`, ...); unknown names are a ModelError."""
    if name not in FAMILIES:
        raise ModelError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def supported_model_types() -> frozenset[str]:
    """Every model_type some family claims."""
    return frozenset(_BY_MODEL_TYPE)


def gguf_model_types() -> frozenset[str]:
    """The model_types GGUF export supports (their family has `gguf` facts)."""
    return frozenset(t for f in FAMILIES.values() if f.gguf is not None for t in f.model_types)


def fused_model_types() -> frozenset[str]:
    """The model_types honed's fused CUDA training path covers."""
    return frozenset(t for f in FAMILIES.values() if f.fused for t in f.model_types)


def template_for(model_type: str | None) -> str | None:
    """The built-in chat template name for a model_type, or None when no family claims it."""
    found = find_family(model_type)
    return found.template if found else None
