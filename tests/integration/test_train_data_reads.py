"""`honed train` reads each data file once: the data-size defaults and the training data come from one read."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

import honed.data.dataset as dataset
from honed.train.sft import train


@pytest.fixture
def count_reads(monkeypatch):
    reads: Counter = Counter()
    real = dataset.read_records

    def counting(path, *args, **kwargs):
        reads[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "read_records", counting)
    return reads


def _rows(path, n):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is marker {i}?"},
                                                     {"role": "assistant", "content": f"Marker {i} is a lab value."}]}) + "\n"
                            for i in range(n)))
    return path


def test_a_run_with_auto_keys_reads_each_file_once(make_config, qa_file, tmp_path, count_reads, caplog):
    extra = _rows(tmp_path / "extra.jsonl", 4)
    cfg = make_config(data={"train": [str(qa_file), {"path": str(extra), "weight": 1.5}], "val_ratio": "auto"},
                      training={"max_steps": 1, "epochs": "auto"}, lora={"r": "auto"})
    with caplog.at_level(logging.INFO, logger="honed.train.defaults"):
        train(cfg, show_progress=False)
    assert count_reads == {"qa.jsonl": 1, "extra.jsonl": 1}
    # 8 + 4 * 1.5 = 14 samples measured before the split; val_ratio auto = 0.15 then carves one of each file:
    # 7 + (3 whole + round(1.5) = 2 drawn) = 12 train, 2 validation.
    assert "suggested for 14 samples" in caplog.text
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert (info["data"]["n_train"], info["data"]["n_validation"]) == (12, 2)
    assert info["data"]["loaded"] == {str(qa_file): 8, str(extra): 4}
    assert cfg.data._source_read is None  # handed on and let go


def test_a_plain_run_with_a_validation_file_reads_each_file_once(make_config, qa_file, tmp_path, count_reads):
    val = _rows(tmp_path / "val.jsonl", 3)
    train(make_config(data={"validation": [str(val)]}, training={"max_steps": 1}), show_progress=False)
    assert count_reads == {"qa.jsonl": 1, "val.jsonl": 1}
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert (info["data"]["n_train"], info["data"]["n_validation"]) == (8, 3)
