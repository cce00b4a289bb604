"""One GPU under torchrun with NCCL: DDP around honed's fused path trains like `honed train` without
torchrun (the same first losses, then within bf16 drift), and the wrapper's cost on one rank is printed
(tokens/s of both runs; not asserted).
Run on the GPU machine with `pytest -m gpu -s tests/gpu/test_ddp_gpu.py`."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from honed.config import config_from_dict
from honed.testing.fsdp_worker import free_port
from honed.train.sft import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
WARMUP_STEPS = 5
EXACT_STEPS = 10


def _train_rows(out: Path) -> list[dict]:
    return [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "train"]


def _config(base: Path, data: Path, out: Path) -> dict:
    return {
        "model": {"name_or_path": str(base)},
        "data": {"train": [str(data)], "max_seq_length": 512, "packing": True},
        "lora": {"r": 16, "alpha": 32},
        "training": {"output_dir": str(out), "max_steps": 30, "batch_size": 4, "learning_rate": 2e-3, "seed": 7,
                     "tensorboard": False, "logging_steps": 1, "lr_scheduler": "constant", "warmup_ratio": 0.0,
                     "save_steps": 1000},
    }


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from honed.testing import build_tiny_model

    return build_tiny_model("qwen2", tmp_path_factory.mktemp("base"), hidden_size=1024, layers=4)


@pytest.fixture
def data_file(tmp_path):
    lines = []
    for i in range(400):
        question = f"Sample {i}: what does marker {i % 37} measure in the blood panel of patient {i * 7 % 101}?"
        answer = " ".join(f"value {j} of marker {i % 37} is within range {j * 3}" for j in range(i % 9 + 3))
        lines.append(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_rank_ddp_on_the_fused_path_equals_plain_training(base_dir, data_file, tmp_path):
    plain = train(config_from_dict(_config(base_dir, data_file, tmp_path / "plain")), show_progress=False)
    plain_info = json.loads((plain.output_dir / "run_info.json").read_text())["model"]
    assert plain_info["training_path"] == "fused"

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(_config(base_dir, data_file, tmp_path / "ddp")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(free_port()),
                    "-m", "honed", "train", str(cfg)], check=True, env=env, cwd=tmp_path, timeout=600)
    ddp_info = json.loads((tmp_path / "ddp" / "run_info.json").read_text())["model"]
    assert (ddp_info["training_path"], ddp_info["strategy"], ddp_info["world_size"]) == ("fused", "ddp", 1)

    plain_rows, ddp_rows = _train_rows(tmp_path / "plain"), _train_rows(tmp_path / "ddp")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in plain_rows]
    plain_losses, ddp_losses = [r["loss"] for r in plain_rows], [r["loss"] for r in ddp_rows]
    # The DDP wrapper (a summing comm hook, world size 1) changes no gradient: a wrong scale or a missed
    # all-reduce shows from the second step on. Later steps drift apart by bf16 round-off that lr 2e-3
    # amplifies (measured on an H200: within 2e-3 up to step 12, up to 7% apart by step 30), so they are
    # compared as a whole: both runs must learn alike (loss 7.4 -> ~1.1 over 30 steps).
    assert ddp_losses[:EXACT_STEPS] == pytest.approx(plain_losses[:EXACT_STEPS], rel=2e-3)
    tail = slice(-10, None)
    assert statistics.mean(ddp_losses[tail]) == pytest.approx(statistics.mean(plain_losses[tail]), rel=0.05)
    assert statistics.mean(plain_losses[tail]) < 0.5 * plain_losses[0]

    def median_tokens_per_s(rows):
        return statistics.median(r["tokens_per_s"] for r in rows[WARMUP_STEPS:])

    plain_speed, ddp_speed = median_tokens_per_s(plain_rows), median_tokens_per_s(ddp_rows)
    print(f"\nDDP_OVERHEAD plain {plain_speed:,.0f} tok/s, torchrun+DDP (1 rank, NCCL) {ddp_speed:,.0f} tok/s, "
          f"ratio {ddp_speed / plain_speed:.3f} ({torch.cuda.get_device_name()})")
