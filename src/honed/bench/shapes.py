"""Model shapes for `honed bench`: random-init models of the peer benchmark's shapes, and their FLOPs.

>>> sorted(SHAPES)
['llama-1b', 'llama-8b', 'qwen-1.5b', 'qwen-7b']
"""

from __future__ import annotations

import os

SHAPES = {  # identical to peer_bench.py's
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True, head_dim=64),
    "llama-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False, head_dim=128),
    "qwen-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                      num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0, tie_word_embeddings=False),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def n_matmul_params(cfg) -> int:
    d, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    attn = d * hd * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2)
    return layers * (attn + 3 * d * f) + vocab * d


def flops_per_token(cfg, seq: float) -> float:
    """peer_bench.py's estimate: forward + input-gradient backward, attention included, no recompute.

    `seq` is how many keys a token attends to on average: the row length for random rows, and
    `attended_length` of the samples for packed ones (a token sees only its own sample).
    """
    return 4 * n_matmul_params(cfg) + 4 * cfg.num_hidden_layers * seq * cfg.hidden_size


def build_shape(shape: str, root: str) -> str:
    """Save a random-init bf16 model of `shape` with a stand-in tokenizer (as peer_bench.py does)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = os.path.join(root, shape)
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    kw = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(cfg.vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", pad_token="t3", unk_token="t0").save_pretrained(out)
    del model
    return out
