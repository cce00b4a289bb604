import pytest
import torch

from honed.errors import OutputExistsError
from honed.train.optim import lr_factors
from honed.utils.fs import atomic_dir, prepare_output_dir


def test_schedules():
    assert lr_factors("constant", 2, 5) == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert lr_factors("linear", 0, 4) == [1.0, 0.75, 0.5, 0.25]
    cos = lr_factors("cosine", 1, 5)
    assert cos[0] == 1.0 and cos[1] == pytest.approx(1.0) and cos[3] == pytest.approx(0.5) and cos[-1] < 0.2


def test_scheduler_drives_optimizer_lr():
    from honed.train.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, "linear", warmup_steps=2, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [1.0, 2.0, 2.0, 1.0]


def test_output_dir_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        prepare_output_dir(tmp_path, overwrite=False, resuming=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    prepare_output_dir(tmp_path, overwrite=False, resuming=True)
    assert (tmp_path / "keep.txt").exists()
    prepare_output_dir(tmp_path, overwrite=True, resuming=False)
    assert not (tmp_path / "keep.txt").exists()


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("new")
            raise RuntimeError("crash mid-save")
    assert (target / "w").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("new")
    assert (target / "w").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
