"""The training run's parts (honed.train.recipe) give exactly the losses of the loop they came from.

The pinned values were recorded from `honed.train.sft.train` before it was split into set-up /
train_step / evaluate / save_checkpoint (commit 1f41a83), on the same tiny run: equal bit for bit.
"""

from __future__ import annotations

import pytest

from honed.testing import build_tiny_model
from honed.testing.lora import train_config, write_numbered_qa

# float.hex() of each step's train loss and of each validation loss (step, loss)
BEFORE_SPLIT_LOSSES = ["0x1.be4ef4c000000p+2", "0x1.ba3c3b8000000p+2", "0x1.b5f87c0000000p+2", "0x1.b458a84000000p+2"]
BEFORE_SPLIT_VAL = [(2, "0x1.b4fc800000000p+2"), (4, "0x1.b37e8f3cf3cf4p+2")]


@pytest.fixture(scope="module")
def tiny_run_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return build_tiny_model("qwen2", root / "base", hidden_size=32, layers=1), write_numbered_qa(root / "qa.jsonl", n=12), root


def accumulating_config(files, name):
    base, data, root = files
    cfg = train_config(base, data, root / name, max_steps=4, learning_rate=1e-2, gradient_accumulation_steps=2, batch_size=2)
    cfg.data.val_ratio, cfg.training.eval_steps = 0.25, 2
    return cfg


def test_train_gives_the_losses_of_the_loop_before_the_split(tiny_run_files):
    from honed.train.sft import train

    result = train(accumulating_config(tiny_run_files, "whole"), show_progress=False)
    assert [x.hex() for x in result.losses] == BEFORE_SPLIT_LOSSES
    assert [(s, v.hex()) for s, v in result.val_losses] == BEFORE_SPLIT_VAL


def test_train_step_and_evaluate_called_directly_give_the_same_numbers(tiny_run_files):
    """A caller that drives the parts itself (as honed bench does) trains exactly as honed train."""
    from honed.train.recipe import collate_group, epoch_batches, evaluate, setup_run, train_step

    run = setup_run(accumulating_config(tiny_run_files, "parts"))
    state, steps = run.state, []
    for _ in range(2):  # two steps as the loop takes them: 2 micro-batches each, the next epoch where one ends
        samples, batches = epoch_batches(run, state.epoch)
        micro = collate_group(run, samples, batches[state.batch_in_epoch : state.batch_in_epoch + 2])
        steps.append(train_step(run, micro))
        assert steps[-1].weight == sum(run.objective.weight(b) for b in micro) and len(steps[-1].micro_losses) == len(micro)
        state.batch_in_epoch += len(micro)
        if state.batch_in_epoch >= len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    assert [s.loss.hex() for s in steps] == BEFORE_SPLIT_LOSSES[:2]
    assert evaluate(run).hex() == BEFORE_SPLIT_VAL[0][1]
    run.metrics.close()
