"""The family table (honed.model.families) against what each layer used to list on its own, against
transformers' real module names, and against the README's table."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from honed.data.templates import BUILTIN, get_template
from honed.errors import ModelError
from honed.model.families import FAMILIES, family_of, find_family, fused_model_types, supported_model_types

README = Path(__file__).resolve().parents[3] / "README.md"

# What the five former lists said, written out by hand: model_type → (template, fused path).
EXPECTED = {"llama": ("llama3", True), "qwen2": ("chatml", True), "qwen3": ("qwen3", True), "mistral": ("mistral", True),
            "gemma2": ("gemma", False), "gemma3": ("gemma", False), "gemma3_text": ("gemma", False), "phi3": ("phi3", False)}
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>",
               "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "phi3": "<|end|>"}


@pytest.mark.parametrize("module", ["honed.model.families", "honed.engine.layout", "honed.utils.strict"])
def test_docstring_examples_run(module):
    assert doctest.testmod(importlib.import_module(module)).failed == 0


def test_the_table_says_what_the_former_lists_said():
    assert supported_model_types() == set(EXPECTED)
    assert fused_model_types() == {t for t, (_, fused) in EXPECTED.items() if fused}
    assert {t: (family_of(t).template, family_of(t).fused) for t in EXPECTED} == EXPECTED
    # tokenizers without a chat_template get the family's built-in one
    assert {t: get_template("auto", None, t).name for t in EXPECTED} == {t: tpl for t, (tpl, _) in EXPECTED.items()}


def test_end_of_turn_tokens_match_the_templates():
    assert {name: f.end_of_turn[0] for name, f in FAMILIES.items()} == END_OF_TURN
    for f in FAMILIES.values():  # the marker the template trains on is the one generation stops at
        assert BUILTIN[f.template].end_of_turn == f.end_of_turn[0]
        assert set(f.end_of_turn) <= set(f.special_tokens)


def test_unknown_model_type_is_a_model_error_naming_the_supported_ones():
    assert find_family("gpt2") is None
    with pytest.raises(ModelError, match=r"'gpt2' is not one of honed's model families; supported: gemma2, gemma3, gemma3_text, llama"):
        family_of("gpt2")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_layout_names_the_real_modules(tiny_model_dir, name):
    from transformers import AutoModelForCausalLM

    family = FAMILIES[name]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(name))
    assert model.config.model_type in family.model_types
    layer, layout = model.model.layers[0], family.layout
    attention, mlp = getattr(layer, layout.attention), getattr(layer, layout.mlp)
    for part in (*layout.qkv, layout.out):
        assert hasattr(attention, part), f"{name}: no {layout.attention}.{part}"
    for part in (*layout.gate_up, layout.down):
        assert hasattr(mlp, part), f"{name}: no {layout.mlp}.{part}"


def families_markdown() -> str:
    """The README's table, from the registry."""
    rows = ["| family | `model_type` | chat template | end of turn | fused CUDA path | GGUF architecture |", "|---|---|---|---|---|---|"]
    for f in FAMILIES.values():
        types = ", ".join(f"`{t}`" for t in f.model_types)
        end = f.end_of_turn[0].replace("|", "\\|")  # a pipe inside a table cell is escaped, code span or not
        rows.append(f"| {f.title} (`{f.name}`) | {types} | `{f.template}` | `{end}` | {'yes' if f.fused else 'no (plain path)'} | "
                    f"{f'`{f.gguf.arch}`' if f.gguf else 'not supported'} |")
    return "\n".join(rows)


def test_readme_table_matches_the_registry():
    assert families_markdown() in README.read_text(encoding="utf-8"), (
        "README's 'Supported model families' table differs from honed.model.families; replace it with:\n" + families_markdown())
