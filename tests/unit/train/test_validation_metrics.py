"""Validation of a preference run logs the objective's rewards, margin and accuracy beside the loss.

A stub training path gives each label token the log-prob -0.1 × its id, so every number below is
worked out by hand from the token ids and the cached reference log-probs (β = 0.5):

    pair A: chosen labels 2, 3 → log π = -0.5, ref -0.6 → reward 0.5 × 0.1 = 0.05
            rejected 4, 5      → log π = -0.9, ref -0.6 → reward -0.15          margin  0.20 (right)
    pair B: chosen 6           → log π = -0.6, ref -0.4 → reward -0.10
            rejected 1         → log π = -0.1, ref -0.4 → reward  0.15          margin -0.25 (wrong)
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from honed.config import PreferenceConfig
from honed.data.preference_batch import TokenizedPair
from honed.data.tokenize import TokenizedSample
from honed.train.objectives.preference import DPOObjective


class LabelIdPath:
    """token_logps = -0.1 × the label id (0 where there is no label), as a training path returns them."""

    padding_free = False

    def token_logps(self, model, batch):
        return -0.1 * batch["labels"][:, 1:].clamp_min(0).float()


def _pair(chosen: list[int], rejected: list[int], ref: tuple[float, float], source: str) -> TokenizedPair:
    def seq(answer):
        return TokenizedSample([1, *answer], [-100, *answer], source, False, len(answer))

    return TokenizedPair(seq(chosen), seq(rejected), source, ref_logps=ref)


def _run(tmp_path):
    objective = DPOObjective()
    objective.settings, objective.reference = PreferenceConfig(beta=0.5), "cache"
    val = [_pair([2, 3], [4, 5], (-0.6, -0.6), "v:1"), _pair([6], [1], (-0.4, -0.4), "v:2")]
    cfg = SimpleNamespace(training=SimpleNamespace(batch_size=1, save_best=True), data=SimpleNamespace(max_seq_length=6, packing=True, system_prompt_file=None, system_prompt=None))  # one pair per row
    from honed.train.checkpoint import TrainState
    from honed.train.distributed import DistContext
    from honed.train.metrics_log import MetricsLog

    return SimpleNamespace(data=SimpleNamespace(val=val), model=torch.nn.Identity(), cfg=cfg, objective=objective, path=LabelIdPath(),
                           tokenizer=SimpleNamespace(pad_token_id=0), settings=SimpleNamespace(device=torch.device("cpu"), precision="fp32"),
                           state=TrainState(step=5), output_dir=tmp_path, metrics=MetricsLog(tmp_path, tensorboard=False),
                           dist=DistContext(), strategy=None)  # one process


HAND_LOSS = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.25))) / 2  # -log σ(margin), mean over the pairs
HAND_METRICS = {"pairs": 2, "rewards/chosen": (0.05 - 0.10) / 2, "rewards/rejected": (-0.15 + 0.15) / 2, "rewards/margin": (0.20 - 0.25) / 2,
                "rewards/accuracy": 0.5, "logps/chosen": (-0.5 - 0.6) / 2, "logps/rejected": (-0.9 - 0.1) / 2}


def test_evaluate_sums_the_objective_metrics_over_its_batches(tmp_path):
    from honed.train.recipe import evaluate

    run, sums = _run(tmp_path), {}
    assert evaluate(run, metrics=sums) == pytest.approx(HAND_LOSS, abs=1e-6)  # two batches of one pair each (batch_size 1)
    assert run.objective.step_metrics(sums) == pytest.approx(HAND_METRICS, abs=1e-6)
    assert evaluate(run) == pytest.approx(HAND_LOSS, abs=1e-6)  # without the dict: the loss alone, as before
    run.metrics.close()


def test_the_eval_row_of_metrics_jsonl_holds_the_preference_metrics(tmp_path, monkeypatch):
    import honed.train.sft as sft

    monkeypatch.setattr(sft, "save_weights", lambda *a, **k: None)  # the stub model has no weights to save
    run = _run(tmp_path)
    result = sft.TrainResult(output_dir=tmp_path, steps=5)
    sft.evaluate_and_keep_best(run, result, sft.TrainProgress(10, enabled=False))
    run.metrics.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 5)]
    assert {k: v for k, v in rows[0].items() if k not in ("kind", "step", "time")} == pytest.approx({"loss": HAND_LOSS, **HAND_METRICS}, abs=1e-6)
    assert result.val_losses == [(5, pytest.approx(HAND_LOSS, abs=1e-6))] and result.best_step == 5
