"""Tiny random models of every supported family, with a tokenizer trained here — no hub needed.

Each family is a row of the family table (`honed.model.families.FAMILIES`): which transformers config
builds it, which chat template its tokenizer carries, and its special tokens (same strings, and for
Gemma/Mistral the same low ids, as the real models), so code paths that look at `bos_token`, `pad_token` or end-of-turn ids
behave as they would on the real checkpoint.

>>> import tempfile
>>> from transformers import AutoModelForCausalLM
>>> out = build_tiny_model("qwen3", tempfile.mkdtemp())          # doctest: +SKIP
>>> AutoModelForCausalLM.from_pretrained(out).config.model_type  # doctest: +SKIP
'qwen3'
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
from pathlib import Path

from honed.data.conversation import Conversation, Message
from honed.data.templates import BUILTIN
from honed.errors import ConfigError
from honed.model.families import FAMILIES, Family


_EN = (["The patient", "A nurse", "The doctor", "Our lab", "The model", "A student", "The engineer", "This report"],
       ["measures", "reviews", "explains", "records", "checks", "compares", "describes", "repeats"],
       ["the glucose level.", "the blood count today.", "a new result.", "the weekly data.",
        "the kidney function.", "the answer carefully.", "the training loss.", "a short story about rain."])
_ZH = (["病人", "护士", "医生", "实验室", "模型", "学生", "工程师", "这份报告"],
       ["检查了", "记录了", "解释了", "比较了", "测量了", "描述了"],
       ["血糖水平。", "血常规结果。", "肾功能指标。", "新的数据。", "训练损失。", "这个问题的答案。"])
_EXTRA = ["Hello! How can I help you today?", "你好！今天我能帮你什么？", "0 1 2 3 4 5 6 7 8 9 10 100 3.14 mmol/L mg/dL",
          "What is HbA1c? It reflects average blood glucose over about three months.", "请用中文回答。",
          "Think step by step.", "def f(x):\n    return x * 2\n", "Yes. No. Maybe, (a) [b] {c} \"d\" 'e' - + = / ?"]


_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen splits every digit


def default_corpus() -> list[str]:
    """Built-in English and Chinese sentences (~900), plus a frozen copy of the first sample data.

    The copy (resources/tiny_corpus/) keeps tiny tokenizers, and the numbers tests pin on tiny
    models, unchanged when the shipped sample data is rebuilt.

    >>> len(default_corpus()) > 500
    True
    """
    texts = [" ".join(p) for p in itertools.product(*_EN)] + ["".join(p) for p in itertools.product(*_ZH)]
    texts += _EXTRA
    sample = importlib.resources.files("honed").joinpath("resources/tiny_corpus/clinical_lab_v1.jsonl")
    if sample.is_file():
        for line in sample.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts += [str(m.get("content", "")) for m in json.loads(line).get("messages", [])]
    return texts


def _scaffolding(template: str) -> list[str]:
    # Rendered chats teach the BPE the role headers ("user\n", "### Response:") so they stay short.
    conv = Conversation([Message("system", "You are concise."), Message("user", "Hi"), Message("assistant", "Hello.")])
    text = "".join(s.text for s in BUILTIN[template].render(conv, add_generation_prompt=False))
    return [text] * 20


def train_tokenizer(texts: list[str] | None = None, family: str = "llama3", vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer carrying `family`'s special tokens and chat template.

    >>> tok = train_tokenizer(family="qwen3", vocab_size=512)
    >>> tok.decode(tok("你好 world")["input_ids"])
    '你好 world'
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    fam = _family(family)
    tok = Tokenizer(models.BPE())
    qwen = fam.pretokenizer == "qwen"
    # The real families' split rules. They matter beyond realism: transformers 5 rebuilds a Qwen2
    # tokenizer's normalizer and pre-tokenizer on load, so training with the same ones keeps the
    # loaded tokenizer identical to the trained one.
    if qwen:
        tok.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(Regex(_QWEN_SPLIT if qwen else _LLAMA3_SPLIT), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(fam.special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = (default_corpus() if texts is None else list(texts)) + _scaffolding(fam.template)
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.plain])
    if fam.adds_bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad, unk_token=fam.unk,
        chat_template=BUILTIN[fam.template].jinja, model_max_length=4096, clean_up_tokenization_spaces=False)


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown tiny model family '{name}'; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build_tiny_model(family: str, out_dir, *, hidden_size: int = 64, layers: int = 2, seed: int = 0,
                     tokenizer=None, dtype: str = "float32") -> Path:
    """Write a random-init model + tokenizer of `family` to `out_dir`; return the folder.

    The folder loads offline with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.

    >>> build_tiny_model("llama3", "/tmp/tiny-llama3")   # doctest: +SKIP
    PosixPath('/tmp/tiny-llama3')
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    fam = _family(family)
    tok = tokenizer if tokenizer is not None else train_tokenizer(family=family)
    heads, head_dim = 4, hidden_size // 4
    ids = {t: tok.convert_tokens_to_ids(t) for t in (fam.bos, fam.eos, fam.pad) if t}
    extra = {k: (head_dim if v is None and k in ("head_dim", "query_pre_attn_scalar") else v) for k, v in fam.tiny_config}
    if fam.config_class == "Gemma3TextConfig":  # exercise both attention kinds even with 2 layers
        extra["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    config = getattr(transformers, fam.config_class)(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=fam.tie_embeddings,
        bos_token_id=ids.get(fam.bos), eos_token_id=ids[fam.eos], pad_token_id=ids.get(fam.pad), **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=ids.get(fam.bos), pad_token_id=ids.get(fam.pad),
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in fam.end_of_turn])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
