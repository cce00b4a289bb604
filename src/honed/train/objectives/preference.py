"""Pairwise preference objectives: DPO (sigmoid, IPO, robust; + RPO's SFT term), ORPO, SimPO.

Each micro-batch holds whole pairs, chosen and rejected packed into the same forward pass
(`honed.data.preference_batch`: sequence 2k = pair k's chosen answer, 2k+1 its rejected one). The
path's `token_logps` gives each label's log-prob (the fused path from the chunked linear
cross-entropy, never the full logits); they are summed per sequence, and the losses of
`preference_losses` turn the sums into one loss per pair. The step averages over pairs.

DPO's reference is the same model with the LoRA adapter switched off (a second forward under
no_grad, no second copy of the weights), or log-probs cached once before training
(`preference.reference`, `honed.train.objectives.reference`). ORPO and SimPO need none.

Metrics (summed per micro-batch; divide by `pairs`): rewards/chosen, rewards/rejected,
rewards/margin, rewards/accuracy (pairs whose chosen reward is higher), logps/chosen, logps/rejected.

>>> DPOObjective().name, ORPOObjective().uses_reference
('dpo', False)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from honed.errors import ConfigError, HonedError
from honed.train.objectives.base import ObjectiveData, ObjectiveLoss, register_objective
from honed.config import PreferenceConfig
from honed.train.objectives.preference_losses import PreferenceLosses, dpo_loss, orpo_loss, rpo_term, simpo_loss

log = logging.getLogger(__name__)


def token_logps(path, model, batch) -> torch.Tensor:
    """[rows, seq_len - 1] log-prob of each next-token label (0 where the label is -100), from the training path."""
    fn = getattr(path, "token_logps", None)
    if fn is not None:
        return fn(model, batch)
    from honed.model.lm_loss import model_logits, shifted_token_losses  # a path without token_logps: full logits

    losses, _ = shifted_token_losses(model_logits(model, batch), batch["labels"])
    return -losses


def adapter_off(model):
    """peft's context that runs the base model alone (the fused LoRA layers honour it too)."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise ConfigError("preference.reference: adapter_off needs a LoRA/QLoRA model; this one has no adapter. Use preference.reference: cache")
    return disable()


def _model_identity(cfg) -> str:
    """What the reference log-probs depend on besides the data: the model, how text is rendered, the adapter started from."""
    m = cfg.model
    return f"{m.name_or_path}|{m.revision}|{m.template}|{m.enable_thinking}|{cfg.method}|{cfg.lora.init_from}"


def n_items(batch) -> int:
    """Pairs (or KTO samples) in a micro-batch: two sequences each, numbered 0..2n-1 in sample_index."""
    return (int(batch["sample_index"].max()) + 1) // 2


class PairwiseObjective:
    """Shared by DPO, ORPO, SimPO (and KTO, whose items also come as two sequences)."""

    name = "dpo"
    uses_reference = True
    kto = False
    sequences_per_sample = 2  # the memory plan counts both sequences of a pair

    def __init__(self):
        self.settings = PreferenceConfig()
        self.reference = "adapter_off"
        self.data: ObjectiveData | None = None

    # ---- data ----------------------------------------------------------------------------------

    def configure(self, cfg) -> None:
        self.settings = getattr(cfg, "preference", None) or PreferenceConfig()
        if self.uses_reference:
            self.reference = self.settings.resolved_reference(cfg.method, cfg.lora.init_from if cfg.method != "full" else None)
        if cfg.data.augment is not None or cfg.data.sampling is not None:
            raise ConfigError(f"data.augment / data.sampling work with objective sft only; objective {self.name} trains on the pairs as given")
        if cfg.data.train_on != "assistant":
            log.info("data.train_on=%s is not used by objective %s: only the final answer of each pair is scored", cfg.data.train_on, self.name)

    def build_data(self, cfg, tokenizer, template) -> ObjectiveData:
        """Load, validate and tokenize the preference files of the data section."""
        from honed.data.dataset import DataReport
        from honed.data.epochs import EpochData
        from honed.data.preference_batch import load_preference_items, tokenize_preference_items

        self.configure(cfg)
        report = DataReport()
        train_items, val_items = load_preference_items(cfg.data, cfg.training.seed, report, kto=self.kto)
        train = tokenize_preference_items(train_items, tokenizer, template, cfg.data, report, cfg.model.enable_thinking)
        val = tokenize_preference_items(val_items, tokenizer, template, cfg.data, report, cfg.model.enable_thinking)
        if not train:
            from honed.errors import DataError

            raise DataError("no training pairs left after tokenization; see the skipped records above")
        report.n_train, report.n_validation = len(train), len(val)
        if report.skipped:
            log.warning("skipped %d records (data.on_bad_record=skip); first: %s: %s", len(report.skipped), *report.skipped[0])
        self.data = ObjectiveData(train=train, val=val, report=report, epochs=EpochData(train, seed=cfg.training.seed))
        return self.data

    def collate(self, samples, rows, *, pad_id, packing, padding_free):
        from honed.data.preference_batch import collate_pairs

        return collate_pairs([[samples[i] for i in row] for row in rows], pad_id=pad_id, packing=packing, padding_free=padding_free)

    def weight(self, batch) -> int:
        return n_items(batch)

    def sample_length(self, sample) -> int:
        return len(sample)

    def token_ids(self, sample) -> list[int]:
        return [t for s in sample.sequences for t in s.input_ids]

    # ---- reference -----------------------------------------------------------------------------

    def reference_logps(self, path, model, batch, n: int) -> torch.Tensor:
        """Both sequences' summed log-probs under the reference: from the batch (cache) or with the adapter off."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference == "cache":
            raise HonedError("preference.reference: cache: reference log-probs were not prepared before training "
                             "(the training recipe calls prepare_reference); use reference: adapter_off")
        from honed.data.preference_batch import sequence_logps

        with torch.no_grad(), adapter_off(model):
            sums, _ = sequence_logps(token_logps(path, model, batch), batch, 2 * n)
        return sums.detach()

    def prepare_reference(self, run) -> None:
        """With `reference: cache`, attach each item's reference log-probs before the first step: computed
        from the model as it is now (the starting weights), or read back from OUTPUT/reference_logps.safetensors
        on resume, when the weights have moved (`recipe.setup_run` calls this once the state is known)."""
        if not self.uses_reference or self.reference != "cache" or self.data is None:
            return
        from honed.train.objectives.reference import CACHE_FILE, cache_key, compute_logps, prepare_cache
        from honed.utils.precision import autocast_context

        model, path = run.model, run.path
        was_training = model.training
        model.eval()
        try:
            prepare_cache({"train": self.data.train, "validation": self.data.val}, path=Path(run.output_dir) / CACHE_FILE,
                          key=cache_key(run.fingerprint, _model_identity(run.cfg), self.name), weights_moved=run.state.step > 0,
                          compute=lambda items: compute_logps(items, lambda b: token_logps(path, model, b), device=run.settings.device,
                                                              pad_id=run.tokenizer.pad_token_id, padding_free=path.padding_free,
                                                              batch_size=run.cfg.training.batch_size,
                                                              autocast=autocast_context(run.settings.precision, run.settings.device)))
        finally:
            model.train(was_training)

    # ---- loss ----------------------------------------------------------------------------------

    def pair_losses(self, pc, pr, lc, lr, ref) -> PreferenceLosses:
        s = self.settings
        return dpo_loss(pc, pr, ref[0::2], ref[1::2], beta=s.beta, loss_type=s.loss_type, label_smoothing=s.label_smoothing,
                        chosen_lengths=lc, rejected_lengths=lr)

    def loss(self, path, model, batch) -> ObjectiveLoss:
        from honed.data.preference_batch import sequence_logps

        n = n_items(batch)
        logps, counts = sequence_logps(token_logps(path, model, batch), batch, 2 * n)
        ref = self.reference_logps(path, model, batch, n).to(logps.dtype) if self.uses_reference else None
        pc, pr, lc, lr = logps[0::2], logps[1::2], counts[0::2], counts[1::2]
        out = self.pair_losses(pc, pr, lc, lr, ref)
        losses = out.losses
        if self.settings.rpo_alpha:
            losses = losses + self.settings.rpo_alpha * rpo_term(pc, lc)
        margin = out.chosen_rewards - out.rejected_rewards
        metrics = {
            "pairs": n,
            "rewards/chosen": float(out.chosen_rewards.sum()),
            "rewards/rejected": float(out.rejected_rewards.sum()),
            "rewards/margin": float(margin.sum()),
            "rewards/accuracy": float((margin > 0).sum()),
            "logps/chosen": float(pc.detach().sum()),
            "logps/rejected": float(pr.detach().sum()),
        }
        return ObjectiveLoss(loss_sum=losses.sum(), weight=n, metrics=metrics)


    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """A step's summed metrics as the per-pair means that metrics.jsonl logs."""
        n = sums.get("pairs", 0) or 1
        return {key: (value if key == "pairs" else value / n) for key, value in sums.items()}


class DPOObjective(PairwiseObjective):
    name = "dpo"


class ORPOObjective(PairwiseObjective):
    name = "orpo"
    uses_reference = False

    def pair_losses(self, pc, pr, lc, lr, ref) -> PreferenceLosses:
        return orpo_loss(pc, pr, lc, lr, beta=self.settings.beta)


class SimPOObjective(PairwiseObjective):
    name = "simpo"
    uses_reference = False

    def pair_losses(self, pc, pr, lc, lr, ref) -> PreferenceLosses:
        s = self.settings
        return simpo_loss(pc, pr, lc, lr, beta=s.beta, gamma=s.simpo_gamma, label_smoothing=s.label_smoothing)


register_objective("dpo", DPOObjective)
register_objective("orpo", ORPOObjective)
register_objective("simpo", SimPOObjective)
