"""Shared fixtures: tiny models of each family, built once per test session."""

from __future__ import annotations

import os

# No test may reach a model hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: `tiny_model_dir("qwen3")` → folder with a tiny random model + tokenizer (cached per session)."""
    from honed.testing import build_tiny_model

    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """Factory: `tiny_tokenizer("llama3")` → that family's tokenizer, loaded with AutoTokenizer (cached)."""
    from transformers import AutoTokenizer

    loaded = {}

    def load(family: str):
        if family not in loaded:
            loaded[family] = AutoTokenizer.from_pretrained(tiny_model_dir(family))
        return loaded[family]

    return load
