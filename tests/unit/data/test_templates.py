"""Chat templates: rendering, Jinja twins, which text is trainable, and errors."""

from __future__ import annotations

import logging

import pytest
from transformers import AutoTokenizer

from honed.data.conversation import Conversation, Message
from honed.data.templates import BUILTIN, JinjaTemplate, builtin_template_names, get_template, split_thinking
from honed.data.tokenize import tokenize_conversation
from honed.errors import ConfigError, DataError

# Tiny family whose tokenizer carries each template (alpaca borrows Mistral's <s>/</s>).
TOKENIZER_FOR = {"llama3": "llama3", "chatml": "qwen2", "qwen3": "qwen3", "mistral": "mistral",
                 "gemma": "gemma2", "phi3": "phi3", "alpaca": "mistral"}

def conv(*pairs, source="test.jsonl:1"):
    return Conversation([Message(role, text, *rest) for role, text, *rest in pairs], source=source)


MULTI = conv(("system", "SYSWORD be brief."), ("user", "USERWORD first question?"), ("assistant", "ANSWER one"),
             ("user", "USERWORD 第二个问题"), ("assistant", "ANSWER two 回答"))

RENDER_CASES = {
    "single": conv(("user", "What is HbA1c?"), ("assistant", "Average glucose over ~3 months.")),
    "multi_system": MULTI,
    "multi_no_system": conv(("user", " padded question \n"), ("assistant", "first\n"), ("user", "again"),
                            ("assistant", "second")),
    "open_user": conv(("system", "Be kind."), ("user", "Hello?")),
    "reasoning": conv(("user", "2+2?"), ("assistant", "4", "add two and two"), ("user", "3+3?"),
                      ("assistant", "6", "add three and three")),
    "think_in_content": conv(("user", "q1"), ("assistant", "<think>\nr1\n</think>\n\na1"), ("user", "q2"),
                             ("assistant", "<think>r2</think>a2")),
}


def tokenizer_with(tiny_tokenizer, name):
    tok = tiny_tokenizer(TOKENIZER_FOR[name])
    if name == "alpaca":  # a private copy, so the shared Mistral tokenizer keeps its own template
        tok = AutoTokenizer.from_pretrained(tok.name_or_path)
        tok.chat_template = BUILTIN["alpaca"].jinja
    return tok


@pytest.mark.parametrize("name", builtin_template_names())
@pytest.mark.parametrize("case", RENDER_CASES)
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("thinking", [None, True, False])
def test_segments_equal_jinja_twin(tiny_tokenizer, name, case, gen, thinking):
    tok = tokenizer_with(tiny_tokenizer, name)
    c = RENDER_CASES[case]
    extra = {} if thinking is None else {"enable_thinking": thinking}
    want = tok.apply_chat_template(c.to_dict()["messages"], tokenize=False, add_generation_prompt=gen, **extra)
    got = "".join(s.text for s in get_template(name, tok).render(c, add_generation_prompt=gen,
                                                                  enable_thinking=thinking))
    assert got == want


# The exact text of every trained span of MULTI: the answer and its end-of-turn marker, nothing else.
EXPECTED_SPANS = {
    "llama3": ["ANSWER one<|eot_id|>", "ANSWER two 回答<|eot_id|>"],
    "chatml": ["ANSWER one<|im_end|>", "ANSWER two 回答<|im_end|>"],
    "qwen3": ["ANSWER one<|im_end|>", "<think>\n\n</think>\n\nANSWER two 回答<|im_end|>"],
    "mistral": [" ANSWER one</s>", " ANSWER two 回答</s>"],
    "gemma": ["ANSWER one<end_of_turn>", "ANSWER two 回答<end_of_turn>"],
    "phi3": ["ANSWER one<|end|>", "ANSWER two 回答<|end|>"],
    "alpaca": ["ANSWER one</s>", "ANSWER two 回答</s>"],
}


def trained_spans(sample, tok):
    spans, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tok.decode(s, skip_special_tokens=False) for s in spans]


@pytest.mark.parametrize("name", builtin_template_names())
@pytest.mark.parametrize("path", ["builtin", "jinja"])
def test_only_answers_are_trained(tiny_tokenizer, name, path):
    tok = tokenizer_with(tiny_tokenizer, name)
    template = get_template(name, tok) if path == "builtin" else JinjaTemplate(tok)
    sample = tokenize_conversation(MULTI, tok, template, train_on="assistant")
    assert trained_spans(sample, tok) == EXPECTED_SPANS[name]
    assert sample.n_trainable == sum(label != -100 for label in sample.labels)

    last = tokenize_conversation(MULTI, tok, template, train_on="last_assistant")
    assert trained_spans(last, tok) == EXPECTED_SPANS[name][-1:]
    assert last.input_ids == sample.input_ids

    everything = tokenize_conversation(MULTI, tok, template, train_on="all")
    assert everything.labels == everything.input_ids


@pytest.mark.parametrize("name", builtin_template_names())
def test_auto_recognises_builtin_jinja_and_stops(tiny_tokenizer, name):
    tok = tokenizer_with(tiny_tokenizer, name)
    auto = get_template("auto", tok)
    assert not isinstance(auto, JinjaTemplate) and auto.name == name
    # The Jinja path derives the same end-of-turn marker from the template text alone.
    assert JinjaTemplate(tok).stop_strings[0] == auto.stop_strings[0]


def test_qwen3_thinking_switch_and_history():
    qwen3 = get_template("qwen3")
    text = lambda c, **kw: "".join(s.text for s in qwen3.render(c, **kw))  # noqa: E731
    ask = conv(("user", "hi"))
    assert text(ask, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text(ask, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert qwen3.supports_thinking and not get_template("chatml").supports_thinking

    rendered = text(RENDER_CASES["reasoning"])
    assert "add two and two" not in rendered  # earlier turn's thinking is dropped
    assert "<|im_start|>assistant\n4<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n<think>\nadd three and three\n</think>\n\n6<|im_end|>\n")
    # <think> written inside the content is parsed the same way
    parsed = text(RENDER_CASES["think_in_content"])
    assert "r1" not in parsed and parsed.endswith("<think>\nr2\n</think>\n\na2<|im_end|>\n")


def test_qwen3_empty_think_block_is_prompt_when_thinking_off(tiny_tokenizer):
    tok, c = tiny_tokenizer("qwen3"), conv(("user", "q"), ("assistant", "plain answer"))
    off = tokenize_conversation(c, tok, get_template("qwen3"), enable_thinking=False)
    on = tokenize_conversation(c, tok, get_template("qwen3"))
    assert trained_spans(off, tok) == ["plain answer<|im_end|>"]
    assert trained_spans(on, tok) == ["<think>\n\n</think>\n\nplain answer<|im_end|>"]
    assert trained_spans(tokenize_conversation(c, tok, JinjaTemplate(tok), enable_thinking=False), tok) == [
        "plain answer<|im_end|>"]


def test_reasoning_kept_inline_for_non_thinking_templates():
    c = conv(("user", "q"), ("assistant", "a", "because"))
    trained = [s.text for s in get_template("llama3").render(c) if s.trainable]
    assert trained == ["<think>\nbecause\n</think>\n\na", "<|eot_id|>"]


def test_system_prompt_merged_into_first_user_turn():
    c = conv(("system", "SYS"), ("user", "U1"), ("assistant", "A1"), ("user", "U2"))
    gemma = "".join(s.text for s in get_template("gemma").render(c))
    assert gemma.startswith("<bos><start_of_turn>user\nSYS\n\nU1<end_of_turn>\n") and gemma.count("SYS") == 1
    mistral = "".join(s.text for s in get_template("mistral").render(c))
    assert mistral == "<s>[INST] SYS\n\nU1[/INST] A1</s>[INST] U2[/INST]"


def test_split_thinking():
    assert split_thinking("<think>\nstep 1\nstep 2\n</think>\n\nanswer") == ("step 1\nstep 2", "answer")
    assert split_thinking("no thinking here") == (None, "no thinking here")
    assert split_thinking("<think></think>x") == ("", "x")


def test_unknown_template_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_template("llama2")
    for name in ["auto", *builtin_template_names()]:
        assert name in str(err.value)


@pytest.mark.parametrize("name", builtin_template_names())
def test_unsupported_role_names_source(name):
    c = conv(("user", "q"), ("tool", "{}"), ("assistant", "a"), source="chats.jsonl:7")
    with pytest.raises(DataError, match=r"chats\.jsonl:7.*'tool'"):
        get_template(name).render(c)


@pytest.mark.parametrize("name", ["gemma", "mistral"])
def test_unmergeable_system_names_source(name):
    for c in [conv(("system", "s"), ("assistant", "a"), source="x.jsonl:2"),
              conv(("user", "q"), ("system", "late"), ("assistant", "a"), source="x.jsonl:2")]:
        with pytest.raises(DataError, match=r"x\.jsonl:2"):
            get_template(name).render(c)


def test_auto_without_chat_template(tiny_tokenizer, caplog):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer("gemma3").name_or_path)
    tok.chat_template = None
    assert get_template("auto", tok, "gemma3_text").name == "gemma"
    assert get_template("auto", tok, "qwen2").name == "chatml"
    with caplog.at_level(logging.WARNING):
        fallback = get_template("auto", tok, "gpt_neox")
    assert fallback.name == "alpaca" and "alpaca" in caplog.text
    # alpaca takes the tokenizer's own BOS/EOS
    assert fallback.stop_strings[0] == "<eos>" and fallback.render(conv(("user", "q")))[0].text == "<bos>"


def test_foreign_jinja_template_is_used_via_prefix_diff(tiny_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer("qwen2").name_or_path)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ': ' + m['content'] + '<|im_end|>' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant: ' }}{% endif %}")
    template = get_template("auto", tok, "qwen2")
    assert isinstance(template, JinjaTemplate) and template.stop_strings[0] == "<|im_end|>"
    sample = tokenize_conversation(MULTI, tok, template)
    assert trained_spans(sample, tok) == ["ANSWER one<|im_end|>", "ANSWER two 回答<|im_end|>"]


def test_prefix_inconsistent_jinja_template_is_refused(tiny_tokenizer):
    # Like Mistral v0.3's own template: the system prompt joins the LAST user turn, so earlier
    # prefixes render differently from the whole conversation.
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer("mistral").name_or_path)
    tok.chat_template = (
        "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}{{ bos_token }}"
        "{% set users = messages | selectattr('role', 'equalto', 'user') | list %}"
        "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + ((sys + '\\n\\n') if sys and m == users[-1] else '') + m['content'] + '[/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
    with pytest.raises(DataError) as err:
        tokenize_conversation(MULTI, tok, get_template("auto", tok, "mistral"))
    assert "test.jsonl:1" in str(err.value) and "template: mistral" in str(err.value)
    assert "chat_template" in str(err.value)
