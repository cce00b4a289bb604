"""The LLM's own hidden states as the gate's embedder: mean-pooled last hidden state, by hand."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from honed.errors import ModelError
from honed.guard.embedders import load_embedder
from honed.guard.fit import fit_gate
from honed.guard.gate import load_gate
from honed.quickstart import resource_path

from .test_gate import LAB


def test_llm_embedder_is_the_masked_mean_of_the_last_hidden_state(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = resource_path("tiny_base")
    emb = load_embedder(f"llm:{folder}")
    texts = ["What is TSH?", "What does a high CRP mean in a blood test?"]  # different lengths: padding must not count
    got = emb.encode(texts)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    for text, row in zip(texts, got):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0].float().mean(0).numpy()
        np.testing.assert_allclose(row, hidden / np.linalg.norm(hidden), atol=1e-4)
    assert emb.name == f"llm:{folder.resolve()}" and got.shape == (2, model.config.hidden_size)

    fit_gate(LAB, tmp_path / "g", embedder=f"llm:{folder}")
    gate = load_gate(tmp_path / "g", embedder=f"llm:{os.path.relpath(folder)}")
    assert gate.parts["all"].embedder.name == emb.name


def test_llm_embedder_needs_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_embedder(f"llm:{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="no config.json"):
        load_embedder(f"llm:{tmp_path}")
