"""Supervised fine-tuning: next-token cross-entropy over the assistant's tokens, weighted by token.

The step's loss is sum over micro-batches of the summed token losses, divided by the trained
tokens of the whole step (`weight` = trained tokens of a micro-batch).

>>> SFTObjective().name
'sft'
"""

from __future__ import annotations

import logging

from honed.data.packing import collate
from honed.model.lm_loss import count_trained_tokens
from honed.train.objectives.base import ObjectiveData, ObjectiveLoss, register_objective

log = logging.getLogger(__name__)


class SFTObjective:
    """Today's SFT: conversations → tokenized samples with an assistant-token mask → token-weighted CE."""

    name = "sft"

    def build_data(self, cfg, tokenizer, template) -> ObjectiveData:
        """The data section's train/validation samples and report, and the per-epoch strategy."""
        from honed.data.dataset import build_datasets
        from honed.data.epochs import make_epoch_data
        from honed.train.scoring import score_with_model

        train, val, report, conversations = build_datasets(cfg.data, tokenizer, template, cfg.training.seed, cfg.model.enable_thinking)
        epochs = make_epoch_data(cfg, conversations, train, tokenizer, template, score_with_model=score_with_model)
        return ObjectiveData(train=train, val=val, report=report, epochs=epochs)

    def collate(self, samples, rows, *, pad_id, packing, padding_free):
        return collate([[samples[i] for i in row] for row in rows], packing=packing, pad_id=pad_id, padding_free=padding_free)

    def weight(self, batch) -> int:
        return count_trained_tokens(batch["labels"])

    def loss(self, path, model, batch) -> ObjectiveLoss:
        loss_sum, n = path.loss_sum(model, batch)
        return ObjectiveLoss(loss_sum=loss_sum, weight=n)

    def sample_length(self, sample) -> int:
        return len(sample.input_ids)

    def token_ids(self, sample) -> list[int]:
        return sample.input_ids


register_objective("sft", SFTObjective)
