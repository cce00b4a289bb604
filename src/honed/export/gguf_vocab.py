"""A Hugging Face tokenizer as GGUF metadata: tokens, their types, merges, special ids, chat template.

llama.cpp re-implements each tokenizer's pre-tokenizer (the regex that splits text before BPE)
and picks it by name (`tokenizer.ggml.pre`). Which one a tokenizer uses is read from its
tokenizer.json split pattern; a pattern llama.cpp has no name for is refused rather than guessed,
and `honed.export.verify` compares llama.cpp's tokens with the Hugging Face tokenizer's.

>>> pre_tokenizer_name({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}}})
'qwen2'
"""

from __future__ import annotations

import json
from pathlib import Path

from honed.export.errors import ExportError

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# split regex → llama.cpp's name for the same pre-tokenizer (llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_*)
KNOWN_SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def _split_patterns(node) -> list[str]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Split":
        pattern = node.get("pattern") or {}
        return [pattern.get("Regex") or pattern.get("String") or ""]
    return [p for child in node.get("pretokenizers") or [] for p in _split_patterns(child)]


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, or an ExportError."""
    patterns = _split_patterns(tokenizer_json.get("pre_tokenizer"))
    for pattern in patterns:
        if pattern in KNOWN_SPLITS:
            return KNOWN_SPLITS[pattern]
    shown = patterns[0][:80] if patterns else "none"
    raise ExportError(f"the tokenizer's pre-tokenizer (split pattern {shown!r}) has no llama.cpp equivalent that "
                      f"honed knows ({', '.join(KNOWN_SPLITS.values())}); GGUF export would tokenise differently")


def tokenizer_kind(folder: Path) -> str:
    """"gpt2" (byte-level BPE, as Llama 3 and Qwen) or "llama" (SentencePiece-style, byte fallback)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        if (folder / "tokenizer.model").is_file():
            return "llama"
        raise ExportError(f"{folder}: no tokenizer.json; GGUF export needs the model's fast tokenizer files")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    if model.get("type") == "BPE":
        pre_tokenizer_name(data)  # refuse an unknown split before any weights are written
        return "gpt2"
    raise ExportError(f"{path}: tokenizer model {model.get('type')!r} is not supported for GGUF export (BPE only)")


def _byte_level_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding matrix is wider than the vocabulary: unused rows
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _prepends_space(data: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts "▁" before the text (llama.cpp's add_space_prefix)."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
                return True
            if node.get("type") == "Metaspace" and node.get("prepend_scheme", "always") != "never" \
                    and node.get("add_prefix_space", True):
                return True
            return any(walk(child) for child in node.get("normalizers") or node.get("pretokenizers") or [])
        return False
    return walk(data.get("normalizer")) or walk(data.get("pre_tokenizer"))


def _sentencepiece_tokens(tokenizer, data: dict, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    # llama.cpp's SentencePiece tokeniser merges the adjacent pair whose joined piece scores highest;
    # the Hugging Face BPE applies merges by rank. A piece scored minus the rank of the merge that
    # makes it orders the merges the same way (gguf's LlamaHfVocab leaves every score at -1000).
    import gguf

    rank: dict[str, int] = {}
    for i, merge in enumerate(data["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text)
        scores.append(-float(rank[text]) if text in rank else 0.0)
        if i == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def write_tokenizer(writer, folder: Path, tokenizer, *, vocab_size: int, end_of_turn: str | None) -> dict:
    """Add the tokenizer of `folder` to a GGUFWriter; returns the special ids written."""
    import gguf

    kind = tokenizer_kind(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ExportError(f"{folder}: only tokenizer.model, no tokenizer.json; save the tokenizer with transformers "
                          "(AutoTokenizer.from_pretrained(...).save_pretrained(...)) to write its fast form")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre_tokenizer_name(data))
        tokens, types = _byte_level_tokens(tokenizer, vocab_size)
    else:
        writer.add_tokenizer_pre("default")
        tokens, scores, types = _sentencepiece_tokens(tokenizer, data, vocab_size)
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_prepends_space(data))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
    # Whether the tokenizer prepends BOS on its own: ask it rather than its config files.
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    special.add_special_token["bos"] = adds_bos
    special.add_special_token["eos"] = False
    special.chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    special.add_to_gguf(writer, quiet=True)
    ids = dict(special.special_token_ids)
    eot = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    if eot is not None and eot != tokenizer.unk_token_id:
        writer.add_eot_token_id(eot)
        ids["eot"] = eot
    return ids
