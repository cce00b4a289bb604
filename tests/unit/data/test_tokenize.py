"""tokenize_conversation / render_prompt_ids: ids, labels, truncation and errors."""

from __future__ import annotations

import pytest

from honed.data.conversation import Conversation, Message
from honed.data.templates import get_template
from honed.data.tokenize import IGNORE_INDEX, render_prompt_ids, tokenize_conversation
from honed.errors import ConfigError, DataError

FAMILY_TEMPLATE = [("llama3", "llama3"), ("qwen2", "chatml"), ("qwen3", "qwen3"), ("mistral", "mistral"),
                   ("gemma3", "gemma"), ("phi3", "phi3")]


def chat(source="d.jsonl:3"):
    return Conversation([Message("system", "You answer lab questions."), Message("user", "What is HbA1c?"),
                         Message("assistant", "Glycated haemoglobin, 糖化血红蛋白."), Message("user", "Normal range?"),
                         Message("assistant", "Below 5.7% in most labs.")], source=source)


@pytest.mark.parametrize("family,name", FAMILY_TEMPLATE)
def test_ids_match_whole_text_tokenization(tiny_tokenizer, family, name):
    # Chunked tokenization must not change the ids the model sees at inference time.
    tok = tiny_tokenizer(family)
    c = chat()
    sample = tokenize_conversation(c, tok, get_template(name))
    whole = tok.apply_chat_template(c.to_dict()["messages"], tokenize=False)
    assert sample.input_ids == tok(whole, add_special_tokens=False)["input_ids"]
    prompt = Conversation(c.messages[:4])
    want = tok(tok.apply_chat_template(prompt.to_dict()["messages"], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]
    assert render_prompt_ids(prompt, tok, get_template(name)) == want


def test_bos_rendered_once(tiny_tokenizer):
    tok = tiny_tokenizer("llama3")  # this tokenizer also prepends BOS by itself; we must not double it
    ids = tokenize_conversation(chat(), tok, get_template("llama3")).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_truncation_keeps_left_and_flags(tiny_tokenizer):
    tok, tpl = tiny_tokenizer("qwen2"), get_template("chatml")
    full = tokenize_conversation(chat(), tok, tpl)
    assert not full.truncated
    cut = tokenize_conversation(chat(), tok, tpl, max_seq_length=len(full.input_ids) - 3)
    assert cut.truncated and cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    # the final newline after <|im_end|> is untrained, so 2 of the 3 dropped tokens were trained
    assert cut.n_trainable == full.n_trainable - 2


def test_truncated_before_any_answer_is_an_error(tiny_tokenizer):
    with pytest.raises(DataError) as err:
        tokenize_conversation(chat("lab.jsonl:12"), tiny_tokenizer("qwen2"), get_template("chatml"), max_seq_length=8)
    assert "lab.jsonl:12" in str(err.value) and "max_seq_length" in str(err.value)


def test_no_assistant_turn_is_an_error(tiny_tokenizer):
    c = Conversation([Message("user", "hello?")], source="q.jsonl:5")
    with pytest.raises(DataError, match=r"q\.jsonl:5.*no assistant answer"):
        tokenize_conversation(c, tiny_tokenizer("llama3"), get_template("llama3"))
    # ...but with train_on=all there is something to learn
    assert tokenize_conversation(c, tiny_tokenizer("llama3"), get_template("llama3"), train_on="all").n_trainable > 0


def test_bad_train_on():
    with pytest.raises(ConfigError, match="train_on"):
        tokenize_conversation(chat(), None, get_template("llama3"), train_on="answers")


def test_labels_are_ids_or_ignored(tiny_tokenizer):
    s = tokenize_conversation(chat(), tiny_tokenizer("gemma2"), get_template("gemma"))
    assert len(s.labels) == len(s.input_ids)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(s.input_ids, s.labels))
    assert s.labels[0] == IGNORE_INDEX and s.source == "d.jsonl:3"
