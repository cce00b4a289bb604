"""The objective seam: the registry's errors, SFT's collation and weight, and paths' token log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from honed.config import config_from_dict
from honed.engine import PlainPath
from honed.engine.settings import resolve_engine_settings
from honed.errors import ConfigError
from honed.train.objectives import base, get_objective
from honed.train.objectives.sft import SFTObjective


def cfg(**top):
    return config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}, **top})


def test_sft_is_the_default_objective():
    objective = get_objective(cfg())
    assert isinstance(objective, SFTObjective) and objective.name == "sft"


def test_an_objective_not_registered_stops_naming_the_key(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {"sft": SFTObjective})
    monkeypatch.setattr(base, "_load_builtin", lambda: None)  # as an install without the preference objectives
    with pytest.raises(ConfigError, match=r"objective: objective 'dpo' is not available .*available: sft.*set objective: sft"):
        get_objective(cfg(objective="dpo"))


def test_the_config_accepts_only_the_five_objective_names():
    assert base.OBJECTIVE_NAMES == ("sft", "dpo", "orpo", "kto", "simpo")
    with pytest.raises(ConfigError, match="objective"):
        cfg(objective="ppo")
    with pytest.raises(ValueError, match="'ppo' is not one of"):
        base.register_objective("ppo", SFTObjective)


def test_sft_weight_is_the_trained_tokens_and_the_loss_is_the_paths():
    batch = {"labels": torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])}
    assert SFTObjective().weight(batch) == 3  # next-token labels past position 0 that train

    class FixedPath:
        def loss_sum(self, model, batch):
            return torch.tensor(4.5), 3

    out = SFTObjective().loss(FixedPath(), None, batch)
    assert (float(out.loss_sum), out.weight, out.metrics) == (4.5, 3, {})


class FixedLogits(torch.nn.Module):
    """A stand-in model whose forward returns the given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **inputs):
        return type("Out", (), {"logits": self.logits})()


def test_plain_token_logps_are_the_log_probabilities_of_the_next_labels():
    # Position 0 predicts label[1] = 2 from logits (0, 0, ln 2, 0): p = 2/5. Position 1's label is -100.
    # Position 2 predicts label[3] = 0 from uniform logits over 4: p = 1/4. Position 3 predicts nothing.
    logits = torch.zeros(1, 4, 4)
    logits[0, 0, 2] = math.log(2)
    labels = torch.tensor([[-100, 2, -100, 0]])
    logps = PlainPath().token_logps(FixedLogits(logits), {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": labels})
    assert logps.shape == (1, 3) and logps.dtype == torch.float32
    assert logps[0].tolist() == pytest.approx([math.log(0.4), 0.0, math.log(0.25)], abs=1e-6)


def reference_per_token(hidden, weight, targets, chunk_rows=None):
    """Full logits, -log p(target) of every position, 0 where the target is -100."""
    losses = torch.nn.functional.cross_entropy((hidden @ weight.t()).float(), targets.clamp_min(0), reduction="none")
    return losses * (targets != -100)


def reference_trained_only(hidden, weight, targets, chunk_rows=None):
    return reference_per_token(hidden, weight, targets)[targets != -100]


@pytest.mark.parametrize("stand_in", [reference_per_token, reference_trained_only])
def test_fused_token_logps_equal_the_plain_paths(tiny_model_dir, monkeypatch, stand_in):
    """Whether engine.loss gives a value per position or per trained position, token_logps lays them out alike."""
    from honed.engine import loss as engine_loss
    from honed.engine.fused import FusedPath
    from honed.testing.lora import lora_model, path_config

    if stand_in is reference_trained_only or not hasattr(engine_loss, "linear_cross_entropy_per_token"):
        monkeypatch.setattr(engine_loss, "linear_cross_entropy_per_token", stand_in, raising=False)  # the chunked one comes with preference training
    model = lora_model(tiny_model_dir("qwen2"))
    ids = torch.randint(5, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels}
    plain = PlainPath().token_logps(model, batch)
    fused_path = FusedPath(resolve_engine_settings(path_config("unused", memory="none", device="cpu"), torch.device("cpu")))
    fused = fused_path.token_logps(fused_path.prepare(model), batch)
    assert fused.shape == plain.shape == (2, 15)
    assert (fused[:, :4] == 0).all()
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
