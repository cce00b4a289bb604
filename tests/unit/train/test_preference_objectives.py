"""Preference objectives on fixed token log-probs: per-sequence sums, reference via adapter-off, metrics, config checks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from honed.config import config_from_dict
from honed.data.preference_batch import TokenizedKTO, TokenizedPair
from honed.data.tokenize import TokenizedSample
from honed.errors import ConfigError
from honed.train.objectives import get_objective
from honed.train.objectives.preference_losses import dpo_loss, kto_kl_estimate, kto_loss, orpo_loss


def seq(n_prompt: int, n_answer: int, first: int = 1) -> TokenizedSample:
    ids = list(range(first, first + n_prompt + n_answer))
    return TokenizedSample(ids, [-100] * n_prompt + ids[n_prompt:], "p:1", False, n_answer)


class ConstantPath:
    """token_logps = `value` at every scored position (and `ref_value` while the adapter is off)."""

    padding_free = False

    def __init__(self, value, ref_value=None):
        self.value, self.ref_value, self.adapter_on = value, ref_value, True

    def token_logps(self, model, batch):
        v = self.value if self.adapter_on else self.ref_value
        return torch.where(batch["labels"][:, 1:] != -100, torch.as_tensor(v), torch.tensor(0.0))


class AdapterModel:
    def __init__(self, path):
        self.path = path

    @contextlib.contextmanager
    def disable_adapter(self):
        self.path.adapter_on = False
        yield
        self.path.adapter_on = True


def cfg(**top):
    return config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}, **top})


def make(objective, **top):
    obj = get_objective(cfg(objective=objective, **top))
    obj.configure(cfg(objective=objective, **top))
    return obj


PAIRS = [TokenizedPair(seq(3, 4), seq(3, 2), "p:1"), TokenizedPair(seq(2, 5), seq(2, 3), "p:2")]


def test_dpo_with_adapter_off_reference():
    path = ConstantPath(-0.5, -1.0)
    obj = make("dpo", preference={"beta": 0.2})
    batch = obj.collate(PAIRS, [[0, 1]], pad_id=0, packing=True, padding_free=False)
    assert obj.weight(batch) == 2
    out = obj.loss(path, AdapterModel(path), batch)
    # Sequence sums: answer tokens × constant (chosen 4 and 5 tokens, rejected 2 and 3; each sequence's end-of-answer included).
    pc, pr = torch.tensor([-2.0, -2.5]), torch.tensor([-1.0, -1.5])
    want = dpo_loss(pc, pr, 2 * pc, 2 * pr, beta=0.2)
    assert float(out.loss_sum) == pytest.approx(float(want.losses.sum()), abs=1e-6)
    assert out.weight == 2 and out.metrics["pairs"] == 2
    assert out.metrics["rewards/margin"] == pytest.approx(float((want.chosen_rewards - want.rejected_rewards).sum()), abs=1e-6)
    assert out.metrics["rewards/accuracy"] == 2.0  # chosen has the larger log-ratio in both pairs
    means = obj.step_metrics({"pairs": 4, "rewards/chosen": 2.0, "rewards/accuracy": 3.0})
    assert means == {"pairs": 4, "rewards/chosen": 0.5, "rewards/accuracy": 0.75}


def test_cached_reference_is_used_and_gradients_flow():
    pairs = [TokenizedPair(seq(3, 4), seq(3, 2), "p:1", ref_logps=(-3.0, -0.5))]
    obj = make("dpo", method="full", preference={"beta": 0.1, "rpo_alpha": 0.5})
    assert obj.reference == "cache"
    batch = obj.collate(pairs, [[0]], pad_id=0, packing=False, padding_free=False)
    value = torch.tensor(-0.5, requires_grad=True)
    out = obj.loss(ConstantPath(value), None, batch)
    out.loss_sum.backward()
    pc, pr = torch.tensor([-2.0]), torch.tensor([-1.0])
    want = dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-0.5]), beta=0.1).losses + 0.5 * 0.5  # + α · mean NLL of chosen
    assert float(out.loss_sum.detach()) == pytest.approx(float(want.sum()), abs=1e-6)
    assert value.grad is not None and value.grad.item() != 0.0


def test_orpo_needs_no_reference():
    obj = make("orpo", preference={"beta": 0.3})
    batch = obj.collate(PAIRS, [[0], [1]], pad_id=0, packing=True, padding_free=True)
    out = obj.loss(ConstantPath(-0.5), None, batch)  # no disable_adapter on the model: never asked for
    want = orpo_loss(torch.tensor([-2.0, -2.5]), torch.tensor([-1.0, -1.5]), torch.tensor([4, 5]), torch.tensor([2, 3]), beta=0.3)
    assert float(out.loss_sum) == pytest.approx(float(want.losses.sum()), abs=1e-6)


def test_kto_uses_mismatched_sequences_for_the_kl_point():
    items = [TokenizedKTO(seq(2, 3), seq(2, 4), True, "k:1", ref_logps=(-2.0, -3.0)),
             TokenizedKTO(seq(2, 2), seq(2, 3), False, "k:2", ref_logps=(-0.5, -2.5))]
    obj = make("kto", preference={"beta": 0.5, "kto_undesirable_weight": 2.0})
    batch = obj.collate(items, [[0, 1]], pad_id=0, packing=True, padding_free=False)
    out = obj.loss(ConstantPath(-0.5), None, batch)
    policy, mismatched = torch.tensor([-1.5, -1.0]), torch.tensor([-2.0, -1.5])
    kl = kto_kl_estimate(mismatched, torch.tensor([-3.0, -2.5]))
    assert float(kl) == pytest.approx(1.0)
    want = kto_loss(policy, torch.tensor([-2.0, -0.5]), torch.tensor([True, False]), kl, beta=0.5, undesirable_weight=2.0)
    assert float(out.loss_sum) == pytest.approx(float(want.losses.sum()), abs=1e-6)
    m = obj.step_metrics(out.metrics)
    assert m["kl"] == pytest.approx(1.0) and m["rewards/chosen"] == pytest.approx(0.25) and m["rewards/rejected"] == pytest.approx(-0.25)


def test_reference_choice_and_config_errors():
    assert make("dpo").reference == "adapter_off"
    assert make("dpo", lora={"init_from": "runs/sft"}).reference == "cache"  # the SFT adapter is the reference, not the bare base
    with pytest.raises(ConfigError, match="adapter_off needs a LoRA/QLoRA adapter"):
        make("dpo", method="full", preference={"reference": "adapter_off"})
    with pytest.raises(ConfigError, match="data.augment / data.sampling work with objective sft only"):
        make("dpo", data={"train": ["a.jsonl"], "augment": {"transforms": []}})
    with pytest.raises(ConfigError, match="label_smoothing does not apply to loss_type ipo"):
        cfg(objective="dpo", preference={"loss_type": "ipo", "label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="preference.bta"):
        cfg(objective="dpo", preference={"bta": 0.1})


def test_memory_plan_counts_both_sequences_of_a_pair():
    from honed.engine.settings import resolve_engine_settings

    sft = resolve_engine_settings(cfg(training={"batch_size": 3}), torch.device("cpu"))
    dpo = resolve_engine_settings(cfg(objective="dpo", training={"batch_size": 3}), torch.device("cpu"))
    assert (sft.tokens_per_micro_batch, dpo.tokens_per_micro_batch) == (3 * 1024, 2 * 3 * 1024)
