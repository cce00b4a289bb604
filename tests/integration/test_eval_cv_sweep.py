"""`honed eval --cv` and `honed sweep` end to end on a tiny model (two trainings of 2 steps each per test)."""

from __future__ import annotations

import csv
import json
import logging
import math

import pytest
import yaml

from honed.cli import main
from honed.errors import OutputExistsError


@pytest.fixture
def train_yaml(tmp_path, qa_file, tiny_model_dir):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
        "data": {"train": str(qa_file), "system_prompt": "You answer lab questions.", "max_seq_length": 96},
        "lora": {"r": 4, "alpha": 8},
        "training": {"output_dir": str(tmp_path / "unused"), "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3,
                     "tensorboard": False, "device": "cpu"},
    }))
    return path


def test_cv_trains_k_folds_and_reports_mean_and_std(train_yaml, tmp_path, qa_file, capsys, caplog):
    out = tmp_path / "cv"
    argv = ["eval", "--cv", "2", str(train_yaml), "--output", str(out), "--max-new-tokens", "4", "--no-progress"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "2-fold cross-validation (8 records)" in shown and "±" in shown

    report = json.loads((out / "cv_report.json").read_text())
    assert report["k"] == 2 and [f["n_test"] for f in report["folds"]] == [4, 4]
    held_out = [line for i in (1, 2) for line in (out / f"fold-{i}" / "test.jsonl").read_text().splitlines()]
    assert sorted(held_out) == sorted(qa_file.read_text().splitlines())  # every record held out exactly once
    for i in (1, 2):
        train_lines = set((out / f"fold-{i}" / "train.jsonl").read_text().splitlines())
        assert not train_lines & set((out / f"fold-{i}" / "test.jsonl").read_text().splitlines())
    fold_loss = [json.loads((out / f"fold-{i}" / "eval" / "report.json").read_text())["models"][0]["summary"]["loss"] for i in (1, 2)]
    loss = report["metrics"]["loss"]
    assert loss["values"] == pytest.approx(fold_loss)
    assert loss["mean"] == pytest.approx(sum(fold_loss) / 2)
    assert loss["std"] == pytest.approx(abs(fold_loss[0] - fold_loss[1]) / math.sqrt(2))

    # Run again: finished folds are not trained again.
    with caplog.at_level(logging.INFO, logger="honed.eval.crossval"):
        assert main(argv) == 0
    assert caplog.text.count("training skipped (done)") == 2


def test_sweep_runs_each_point_resumes_and_writes_table_and_plot(train_yaml, tmp_path, qa_file, capsys, caplog):
    out = tmp_path / "sweep"
    argv = ["sweep", str(train_yaml), "training.learning_rate=auto", "--grid", "lora.r=2,auto", "--data", str(qa_file),
            "--output", str(out), "--metric", "loss", "--max-new-tokens", "4", "--no-progress"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "honed sweep: 2 points" in shown

    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in sweep["points"]] == ["lora.r-2", "lora.r-auto"]
    assert all("loss" in p["metrics"] for p in sweep["points"])
    # The auto rank and rate were picked from the data size (8 samples: r 8, lr 1e-4) and recorded in the run.
    resolved = [yaml.safe_load((out / p / "run" / "config.yaml").read_text()) for p in ("lora.r-2", "lora.r-auto")]
    assert [c["lora"]["r"] for c in resolved] == [2, 8] and {c["training"]["learning_rate"] for c in resolved} == {1e-4}
    trainable = [p["trainable_params"] for p in sweep["points"]]
    assert trainable[1] == 4 * trainable[0]  # LoRA parameters grow linearly with the rank
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["lora.r"] for r in rows] == ["2", "auto"] and float(rows[0]["loss"]) == pytest.approx(sweep["points"][0]["metrics"]["loss"])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    with caplog.at_level(logging.INFO, logger="honed.eval.sweep"):
        assert main(argv) == 0
    assert caplog.text.count("training skipped (done)") == 2 and caplog.text.count("evaluation skipped (done)") == 2
    assert json.loads((out / "sweep.json").read_text())["points"][0]["metrics"] == sweep["points"][0]["metrics"]


def test_sweep_refuses_a_folder_that_is_not_its_own(train_yaml, tmp_path, qa_file):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        from honed.commands.sweep import run
        from honed.cli import build_parser

        run(build_parser().parse_args(["sweep", str(train_yaml), "--grid", "lora.r=2,4", "--data", str(qa_file), "--output", str(out)]))
