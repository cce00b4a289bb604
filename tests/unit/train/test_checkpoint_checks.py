"""Resuming refuses a checkpoint whose tensors do not fit (a changed lora.r) and says when there is none."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from honed.errors import ConfigError
from honed.train.checkpoint import TrainState, find_resume_checkpoint, load_checkpoint, save_checkpoint


def _parts(width: int, r: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, width))
    model.peft_config = {"default": type("Cfg", (), {"r": r})()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def test_a_changed_shape_is_refused_with_the_reason(tmp_path):
    model, opt, sched = _parts(8, r=8)
    adapter = lambda d: (d / "adapter_config.json").write_text(json.dumps({"r": 8}))  # noqa: E731
    ckpt = save_checkpoint(tmp_path, model, opt, sched, TrainState(step=3), save_model_files=adapter)
    other, opt2, sched2 = _parts(4, r=4)
    with pytest.raises(ConfigError, match=r"0\.bias is \(8,\) there and \(4,\) here \(lora\.r was 8, is 4\); resume with the config"):
        load_checkpoint(ckpt, other, opt2, sched2)
    same, opt3, sched3 = _parts(8, r=8)
    assert load_checkpoint(ckpt, same, opt3, sched3).step == 3


def test_resume_true_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="honed.train.checkpoint"):
        assert find_resume_checkpoint(True, tmp_path) is None
    assert "holds no checkpoint yet: starting from scratch" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="honed.train.checkpoint"):
        assert find_resume_checkpoint(False, tmp_path) is None
    assert caplog.text == ""


def test_a_checkpoint_records_the_fp8_run_s_bases_and_a_resume_reads_them(tmp_path):
    from honed.train.checkpoint import saved_fp8_bases

    model, opt, sched = _parts(8, r=8)
    adapter = lambda d: (d / "adapter_config.json").write_text(json.dumps({"r": 8}))  # noqa: E731
    ckpt = save_checkpoint(tmp_path, model, opt, sched, TrainState(step=3, fp8_bases="bf16"), save_model_files=adapter)
    assert saved_fp8_bases(ckpt) == "bf16"
    assert load_checkpoint(ckpt, *_parts(8, r=8)).fp8_bases == "bf16"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "fp8_bases": None}))  # a bf16 run, or an older checkpoint
    assert saved_fp8_bases(ckpt) is None and saved_fp8_bases(None) is None
