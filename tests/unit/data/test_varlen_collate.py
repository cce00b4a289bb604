"""Padding-free collation of unpacked samples (`packing: false` on a varlen path): one row, no
padding, and exactly the padded batch's loss — checked on a tiny model through the plain path."""

from __future__ import annotations

import pytest
import torch

from honed.data.packing import collate
from honed.data.tokenize import TokenizedSample
from honed.engine import PlainPath
from honed.model.lm_loss import count_trained_tokens, model_logits
from honed.train.losses import per_sample_losses


def sample(ids, prompt):
    """A sample whose first `prompt` tokens do not train."""
    return TokenizedSample(list(ids), [-100] * prompt + list(ids[prompt:]), f"s{ids[0]}", False, len(ids))


def unpacked_rows():
    return [[sample(range(10, 17), 3)], [sample(range(30, 34), 1)], [sample(range(50, 61), 5)]]


def test_unpacked_samples_join_into_one_row_without_padding():
    batch = collate(unpacked_rows(), packing=False, pad_id=0, padding_free=True)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, 7 + 4 + 11)
    assert batch["position_ids"].tolist() == [list(range(7)) + list(range(4)) + list(range(11))]
    assert batch["sample_index"].tolist() == [[0] * 7 + [1] * 4 + [2] * 11]
    labels = batch["labels"][0].tolist()
    assert labels[7] == -100 and labels[11] == -100  # each sample's first label: never a target of the previous sample
    assert labels[:7] == [-100] * 3 + list(range(13, 17))


def test_without_padding_free_unpacked_samples_stay_padded():
    batch = collate(unpacked_rows(), packing=False, pad_id=0)
    assert batch["input_ids"].shape == (3, 11) and "attention_mask" in batch


def test_padding_free_keeps_the_trained_token_count():
    padded = collate(unpacked_rows(), packing=False, pad_id=0)
    joined = collate(unpacked_rows(), packing=False, pad_id=0, padding_free=True)
    assert count_trained_tokens(joined["labels"]) == count_trained_tokens(padded["labels"]) == 4 + 3 + 6


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_padding_free_batch_has_the_padded_batch_loss(tiny_model_dir, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    rows = [[sample([5 + (i * 7 + j * 13) % (vocab - 5) for j in range(n)], p)] for i, (n, p) in enumerate([(7, 3), (4, 1), (11, 5)])]
    padded = collate(rows, packing=False, pad_id=0)
    joined = collate(rows, packing=False, pad_id=0, padding_free=True)
    with torch.no_grad():
        s_pad, n_pad = PlainPath().loss_sum(model, padded)
        s_join, n_join = PlainPath().loss_sum(model, joined)
        per_pad = per_sample_losses(model_logits(model, padded), padded["labels"], padded["sample_index"])
        per_join = per_sample_losses(model_logits(model, joined), joined["labels"], joined["sample_index"])
    assert n_join == n_pad
    assert abs(float(s_join) - float(s_pad)) <= 1e-5 * abs(float(s_pad))
    assert per_join.keys() == per_pad.keys() == {0, 1, 2}
    for k in per_pad:
        assert per_join[k] == pytest.approx(per_pad[k], rel=1e-5)
