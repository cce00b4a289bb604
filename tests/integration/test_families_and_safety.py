"""Every supported family trains and chats; other architectures fall back; unsafe weights are refused."""

from __future__ import annotations

import logging

import pytest
import torch

from honed.config import ModelConfig
from honed.errors import ModelError
from honed.model.families import FAMILIES
from honed.train.sft import train


@pytest.mark.parametrize("family", list(FAMILIES))  # every row of the family table
def test_each_family_trains_lora_and_answers(family, make_config):
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    cfg = make_config(family, training={"max_steps": 3})
    result = train(cfg, show_progress=False)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    bot = ChatModel.load(adapter=cfg.training.output_dir)
    reply = bot.reply([Message("user", "What is TSH?")])
    assert reply.new_tokens > 0


def test_unsupported_architecture_takes_the_plain_path(tmp_path, qa_file, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    from honed.config import config_from_dict
    from honed.testing import train_tokenizer

    tok = train_tokenizer(family="llama3")
    tok.chat_template = None
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    cfg = config_from_dict({
        "model": {"name_or_path": str(tmp_path / "gpt2")},
        "data": {"train": [str(qa_file)]},
        "lora": {"target_modules": ["c_attn"]},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "tensorboard": False},
    })
    with caplog.at_level(logging.INFO):
        result = train(cfg, show_progress=False)
    assert result.steps == 2
    text = caplog.text
    assert "'gpt2' is not one of honed's tested families" in text and "alpaca" in text


def test_pickle_weights_need_explicit_opt_in(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from honed.model.load import load_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"))
    (tmp_path / "pickled").mkdir()
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")  # an old-style pickle checkpoint
    with pytest.raises(ModelError, match="allow_pickle"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "pickled")), device=torch.device("cpu"))
    loaded, _ = load_model(ModelConfig(name_or_path=str(tmp_path / "pickled"), allow_pickle=True), device=torch.device("cpu"))
    assert loaded.config.model_type == "qwen2"


def test_remote_code_is_off_by_default(tmp_path, tiny_model_dir):
    import json
    import shutil

    from honed.model.load import load_model

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir("qwen2"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="my_custom_lm", auto_map={"AutoConfig": "modeling_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_model(ModelConfig(name_or_path=str(folder)), device=torch.device("cpu"))


def test_no_hub_kernels_are_taken_by_default(tiny_model_dir):
    """transformers takes layers from the Hub's `kernels` by default where that package is installed:
    code fetched at run time. honed's loader asks for none."""
    from honed.model.load import load_model

    model, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir("llama3"))), device=torch.device("cpu"))
    assert getattr(model, "use_kernels", False) is False


def test_qwen3_thinking_switch_reaches_the_prompt(tiny_model_dir):
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    bot = ChatModel.load(str(tiny_model_dir("qwen3")))
    from honed.data.conversation import Conversation
    from honed.data.tokenize import render_prompt_ids

    conv = Conversation([Message("user", "hi")])
    off = bot.tokenizer.decode(render_prompt_ids(conv, bot.tokenizer, bot.template, enable_thinking=False))
    on = bot.tokenizer.decode(render_prompt_ids(conv, bot.tokenizer, bot.template, enable_thinking=True))
    assert off.endswith("<think>\n\n</think>\n\n") and not on.endswith("</think>\n\n")


def test_interactive_chat_keeps_history(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from honed.cli import main

    lines = iter(["hello", "/reset", "again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []
    from honed.infer import generate

    real_reply = generate.ChatModel.reply

    def spy(self, messages, settings=None):
        seen.append([m.content for m in messages])
        return real_reply(self, messages, settings)

    monkeypatch.setattr(generate.ChatModel, "reply", spy)
    assert main(["chat", "--model", str(tiny_model_dir("qwen2")), "--max-new-tokens", "4", "--system", "S"]) == 0
    assert seen[0] == ["S", "hello"] and seen[1] == ["S", "again"]  # /reset cleared the first exchange
    assert capsys.readouterr().out.count("bot>") == 2


def test_a_missing_model_folder_is_named(tmp_path):
    from honed.cli import main
    from honed.model.load import load_model

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=f"model folder not found: {missing}"):
        load_model(ModelConfig(name_or_path=str(missing)), device=torch.device("cpu"))
    assert main(["chat", "--model", str(missing), "--prompt", "hi"]) == 2
