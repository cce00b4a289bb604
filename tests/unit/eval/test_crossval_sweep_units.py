"""Fold plans, fold summaries and sweep grids without training anything."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from honed.errors import ConfigError, DataError
from honed.eval.crossval import make_folds, stratify_values, summarize_folds
from honed.eval.sweep import grid_points, parse_grid, point_name, sweep_csv


def test_stratified_folds_keep_class_shares():
    strata = ["in"] * 6 + ["out"] * 3
    folds = make_folds(9, 3, seed=1, strata=strata)
    for train, test in folds:
        assert Counter(strata[i] for i in test) == {"in": 2, "out": 1}
        assert sorted(train + test) == list(range(9))
    assert sorted(i for _, test in folds for i in test) == list(range(9))


def test_folds_fall_back_to_plain_kfold_when_a_class_is_too_small():
    folds = make_folds(6, 3, seed=0, strata=["a"] * 5 + ["b"])
    assert sorted(len(test) for _, test in folds) == [2, 2, 2]


def test_fold_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--cv 1"):
        make_folds(8, 1)
    with pytest.raises(DataError, match="only 3 training records"):
        make_folds(3, 5)


def test_stratify_values_uses_the_first_field_every_record_has():
    records = [{"kind": "in_domain", "label": "x"}, {"kind": "out_of_domain"}]
    assert stratify_values(records) == ["in_domain", "out_of_domain"]
    assert stratify_values([{"kind": "a"}, {}]) is None


def test_summarize_folds_mean_and_sample_std():
    s = summarize_folds([{"loss": 1.0, "rougeL": 0.2}, {"loss": 2.0}, {"loss": 4.0}])
    assert set(s) == {"loss"}  # a metric missing from a fold is left out
    assert s["loss"]["mean"] == pytest.approx(7 / 3)
    assert s["loss"]["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_grid_values_split_outside_brackets_and_make_every_combination():
    grid = parse_grid(["lora.target_modules=[q_proj,v_proj],all-linear", "training.learning_rate=1e-4,2e-4"])
    assert grid[0] == ("lora.target_modules", ["[q_proj,v_proj]", "all-linear"])
    points = grid_points(grid)
    assert len(points) == 4 and points[1] == ["lora.target_modules=[q_proj,v_proj]", "training.learning_rate=2e-4"]
    assert point_name(points[1]) == "lora.target_modules-q_proj-v_proj_training.learning_rate-2e-4"


@pytest.mark.parametrize("items, message", [
    (["lora.r"], "KEY=V1,V2"),
    (["lora.r=8,8"], "repeated"),
    (["lora.r=8", "lora.r=16"], "given twice"),
    ([], "at least one --grid"),
])
def test_bad_grids_are_refused(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_sweep_csv_rows():
    sweep = {"grid": [["lora.r", ["8", "16"]]], "columns": ["loss", "rougeL"],
             "points": [{"point": "lora.r-8", "overrides": {"lora.r": "8"}, "trainable_params": 10, "metrics": {"loss": 1.5}},
                        {"point": "lora.r-16", "overrides": {"lora.r": "16"}, "metrics": {"loss": 1.25, "rougeL": 0.5}}]}
    assert sweep_csv(sweep).splitlines() == ["point,lora.r,trainable_params,loss,rougeL", "lora.r-8,8,10,1.5,",
                                             "lora.r-16,16,,1.25,0.5"]


def test_overwrite_never_deletes_a_folder_holding_the_inputs(tmp_path):
    from honed.errors import OutputExistsError
    from honed.eval.sweep import check_sweep_folder

    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    with pytest.raises(OutputExistsError, match="--overwrite would delete it"):
        check_sweep_folder(tmp_path, ["lora.r-8"], overwrite=True, inputs=[str(data)])
    assert data.exists()
    other = tmp_path / "old-sweep"
    (other / "x").mkdir(parents=True)
    check_sweep_folder(other, ["lora.r-8"], overwrite=True, inputs=[str(data)])
    assert not other.exists()
