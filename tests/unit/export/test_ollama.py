"""The Modelfile's Go template renders a chat exactly as honed's own chat format does."""

from __future__ import annotations

import re

import jinja2
import pytest

from honed.data.conversation import Conversation, Message
from honed.data.templates import BUILTIN
from honed.export.ollama import go_template, modelfile_text


def go_to_jinja(template: str) -> str:
    """Translate the small Go-template subset honed writes into Jinja, to render it in the test.

    (Ollama itself is a Go program; this keeps the check inside Python.)"""
    out, stack = [], []
    for piece in re.split(r"({{.*?}})", template):
        if not piece.startswith("{{"):
            out.append(piece.replace("{", "{{ '{' }}") if "{" in piece else piece)
            continue
        action = piece[2:-2].strip()
        if action == "range .Messages":
            stack.append("for")
            out.append("{% for m in messages %}")
        elif m := re.fullmatch(r'(else )?if eq \.Role "(\w+)"', action):
            if not m.group(1):
                stack.append("if")
            out.append(f"{{% {'elif' if m.group(1) else 'if'} m.role == '{m.group(2)}' %}}")
        elif action == "if $system":
            stack.append("if")
            out.append("{% if ns.system %}")
        elif action == "end":
            out.append(f"{{% end{stack.pop()} %}}")
        elif action == ".Content":
            out.append("{{ m.content }}")
        elif action == "$system":
            out.append("{{ ns.system }}")
        elif action == '$system := ""':
            out.append("{% set ns = namespace(system='') %}")
        elif action == "$system = .Content":
            out.append("{% set ns.system = m.content %}")
        elif action == '$system = ""':
            out.append("{% set ns.system = '' %}")
        else:
            raise AssertionError(f"unexpected Go action {action!r}")
    assert not stack
    return "".join(out)


@pytest.mark.parametrize("name", ["chatml", "llama3", "qwen3", "mistral", "gemma", "phi3"])
def test_go_template_renders_like_the_chat_format(name):
    fmt = BUILTIN[name]
    conv = Conversation([Message("system", "Only lab questions."), Message("user", "What is TSH?"),
                         Message("assistant", "A pituitary hormone."), Message("user", "And ALT?")])
    expected = "".join(s.text for s in fmt.render(conv, add_generation_prompt=True))
    expected = expected.removeprefix(fmt.bos)  # llama.cpp adds BOS from the GGUF metadata
    rendered = jinja2.Template(go_to_jinja(go_template(fmt)), keep_trailing_newline=True).render(
        messages=[{"role": m.role, "content": m.content} for m in conv.messages])
    assert rendered == expected


def test_modelfile_carries_system_stops_and_parameters():
    text = modelfile_text("model-q4_k_m.gguf", BUILTIN["chatml"], ["<|im_end|>", "<|im_end|>", "<|endoftext|>"],
                          system="Only lab questions.", num_ctx=2048)
    lines = text.splitlines()
    assert lines[0] == "FROM ./model-q4_k_m.gguf"
    assert 'SYSTEM """Only lab questions."""' in lines
    assert [x for x in lines if x.startswith("PARAMETER stop")] == ['PARAMETER stop "<|im_end|>"',
                                                                     'PARAMETER stop "<|endoftext|>"']
    assert "PARAMETER num_ctx 2048" in lines and "PARAMETER temperature 0" in lines
