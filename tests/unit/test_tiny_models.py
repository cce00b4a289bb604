"""Tiny random models: every family loads offline, runs, and its tokenizer behaves like the real one."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from honed.testing import FAMILIES, build_tiny_model, train_tokenizer

MODEL_TYPES = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral",
               "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_and_runs(tiny_model_dir, family):
    folder = tiny_model_dir(family)
    assert (folder / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == MODEL_TYPES[family]
    assert model.config.vocab_size == len(tok)
    messages = [{"role": "user", "content": "What is HbA1c?"}, {"role": "assistant", "content": "血糖的平均值。"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    # random init: finite and close to uniform over the vocabulary
    assert torch.isfinite(loss) and abs(loss.item() - math.log(len(tok))) < 1.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenizer_matches_family(tiny_tokenizer, tiny_model_dir, family):
    fam, tok = FAMILIES[family], tiny_tokenizer(family)
    for text in ["Hello world, the glucose level is 5.4 mmol/L.", "你好世界，医生检查了血糖水平。", " two  spaces\n\ttab"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for special in fam.special_tokens:  # every special token is one id, never split
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (fam.bos, fam.eos, fam.pad)
    assert (tok("x")["input_ids"][0] == tok.bos_token_id) == fam.adds_bos
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family))
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids(t) for t in fam.end_of_turn]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loaded_tokenizer_equals_trained_one(tiny_tokenizer, family):
    # transformers may rebuild a family's tokenizer pipeline on load (it does for Qwen2); the ids must not move.
    text = "Total 12345 mg, ref 3.5-7.0\n\n  indented  你好，世界！ <|im_start|>x 'll <think>y</think> e\u0301"
    trained, loaded = train_tokenizer(family=family), tiny_tokenizer(family)
    assert trained(text)["input_ids"] == loaded(text)["input_ids"]
    assert trained.get_vocab() == loaded.get_vocab()


def test_gemma_and_mistral_keep_real_special_ids(tiny_tokenizer):
    gemma, mistral = tiny_tokenizer("gemma2"), tiny_tokenizer("mistral")
    assert (gemma.pad_token_id, gemma.eos_token_id, gemma.bos_token_id) == (0, 1, 2)
    assert (mistral.unk_token_id, mistral.bos_token_id, mistral.eos_token_id) == (0, 1, 2)


def test_build_is_deterministic_and_sized(tmp_path):
    tok = train_tokenizer(["a few words", "其他的字"] * 50, family="qwen2", vocab_size=400)
    assert len(tok) <= 400 + len(FAMILIES["qwen2"].plain)
    a = build_tiny_model("qwen2", tmp_path / "a", tokenizer=tok, seed=3, hidden_size=32, layers=1)
    b = build_tiny_model("qwen2", tmp_path / "b", tokenizer=tok, seed=3, hidden_size=32, layers=1)
    ma, mb = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b))
    assert ma.config.hidden_size == 32 and ma.config.num_hidden_layers == 1
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_bfloat16_build(tmp_path):
    out = build_tiny_model("llama3", tmp_path / "bf16", dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_unknown_family():
    from honed.errors import ConfigError

    with pytest.raises(ConfigError, match="qwen3"):
        build_tiny_model("gpt2", "/nonexistent")


def test_tiny_train_losses_runs_each_variant_from_the_same_start(tmp_path):
    """The GPU tests' comparison helper, on the CPU: same model, data and seed for every variant,
    so their first losses agree and only the variant's own key makes them differ after that."""
    from honed.testing.lora import tiny_train_losses

    losses = tiny_train_losses(tmp_path, "qwen2", {"slow": {"learning_rate": 1e-5}, "fast": {}}, max_steps=3, learning_rate=3e-3)
    assert list(losses) == ["slow", "fast"] and all(len(v) == 3 for v in losses.values())
    assert losses["slow"][0] == pytest.approx(losses["fast"][0], rel=1e-6)
    assert losses["slow"][-1] != pytest.approx(losses["fast"][-1], rel=1e-4)
    assert (tmp_path / "slow").is_dir() and (tmp_path / "fast").is_dir()
