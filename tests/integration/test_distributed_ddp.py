"""Training across processes (torchrun / torch.distributed, gloo on the CPU) equals one process.

Every multi-process run here is tiny (a 2-layer model, 8 samples, 2-4 ranks, one thread each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from honed.config import config_from_dict
from honed.testing.distributed import spawn_training
from honed.testing.fsdp_worker import free_port
from honed.train.sft import train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def raw_config(tmp_path, qa_file, tiny_model_dir):
    """A tiny LoRA run as a dict: 8 samples, one row per micro-batch, no validation, loss at every step."""

    def make(out: str, *, accumulation: int, epochs: int = 2, **training) -> dict:
        return {
            "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
            "data": {"train": [str(qa_file)], "system_prompt": "You answer lab questions.", "max_seq_length": 96, "packing": False},
            "lora": {"r": 4, "alpha": 8},
            "training": {"output_dir": str(tmp_path / out), "epochs": epochs, "batch_size": 1, "learning_rate": 5e-3, "seed": 3,
                         "tensorboard": False, "logging_steps": 1, "gradient_accumulation_steps": accumulation, "device": "cpu",
                         "lr_scheduler": "linear", **training},
        }

    return make


def losses_of(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "train"}


def child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(extra)
    return env


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5, rel=1e-5), step


def test_two_ranks_through_the_cli_equal_one_process_with_the_same_global_batch(raw_config, tmp_path):
    # Hard mining scores epoch 0 (in shares, gathered) to re-plan epoch 1: a wrong gather changes the plan.
    sampling = {"hard_mining": {"top_fraction": 0.25, "factor": 2}, "curriculum": {"measure": "length", "buckets": 2, "epochs": 1}}
    def cfg(out, accumulation):
        raw = raw_config(out, accumulation=accumulation)
        raw["data"]["sampling"] = sampling
        return raw

    one = train(config_from_dict(cfg("one", 2)), show_progress=False)
    cfg = write_config(cfg("two", 1), tmp_path / "two.yaml")
    proc = subprocess.run([sys.executable, "-m", "honed", "train", str(cfg), "--nproc-per-node", "2", "--no-progress"],
                          env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    # metrics.jsonl holds each step once: rank 1 wrote nothing
    assert_same_losses(losses_of(two), losses_of(one.output_dir))
    assert len(losses_of(two)) == one.steps
    got, want = load_file(two / "adapter_model.safetensors"), load_file(one.output_dir / "adapter_model.safetensors")
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
    info = json.loads((two / "run_info.json").read_text())["model"]
    assert (info["world_size"], info["global_batch_rows"]) == (2, 2)
    assert "global batch = 2 process(es) × 1 rows per micro-batch × 1 accumulation = 2 rows" in proc.stderr
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.output_dir.iterdir())


def test_resume_of_a_two_rank_checkpoint_on_one_and_on_four_ranks_continues_the_same_curve(raw_config, tmp_path):
    # 7 training samples (one goes to validation): each epoch's second step has 3 micro-batches for
    # 4 slots, so a rank idles there; the validation loss is summed over ranks' shares.
    extra = {"epochs": 3, "eval_steps": 2}
    def cfg(out, accumulation):
        raw = raw_config(out, accumulation=accumulation, **extra)
        raw["data"]["val_ratio"] = 0.125
        return raw

    reference = train(config_from_dict(cfg("ref", 4)), show_progress=False)
    assert reference.steps == 6
    spawn_training(cfg("two", 2), world_size=2, stop_after_steps=3)
    two = tmp_path / "two"
    assert (two / "checkpoints" / "checkpoint-000003" / "trainer_state.json").is_file()
    assert_same_losses(losses_of(two), {s: v for s, v in losses_of(reference.output_dir).items() if s <= 3})
    import shutil

    shutil.copytree(two, tmp_path / "four")
    # one process: gradient_accumulation_steps 2 becomes 4 to keep the checkpoint's 4 micro-batches per step
    resumed = train(config_from_dict(cfg("two", 2) | {"training": {**cfg("two", 2)["training"], "resume": True}}), show_progress=False)
    assert resumed.steps == 6
    assert_same_losses(losses_of(two), losses_of(reference.output_dir))
    assert [v for _, v in resumed.val_losses] == pytest.approx([v for s, v in reference.val_losses if s > 3], abs=1e-5)
    # four processes: accumulation 1
    raw4 = cfg("four", 2)
    raw4["training"]["resume"] = True
    spawn_training(raw4, world_size=4)
    assert_same_losses(losses_of(tmp_path / "four"), losses_of(reference.output_dir))


def worker_pid(job: str, rank: int, timeout: float = 120.0) -> int:
    """The pid of the torchrun worker of `rank` in the job tagged `job` (found by its environment)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
            except OSError:
                continue
            if env.get("HONED_TEST_JOB") == job and env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank}")


def start_two_rank_job(cfg: Path, out: Path) -> tuple[subprocess.Popen, int]:
    """`honed train CFG --nproc-per-node 2` in the background, once it has trained a step: (process, rank 1's pid)."""
    job = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "honed", "train", str(cfg), "--nproc-per-node", "2", "--no-progress"],
                            env=child_env(HONED_TEST_JOB=job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = worker_pid(job, 1)
    deadline = time.time() + 180
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    return proc, pid


def test_a_killed_rank_ends_the_job_with_an_error_naming_it(raw_config, tmp_path):
    cfg = write_config(raw_config("out", accumulation=1, epochs=200), tmp_path / "c.yaml")
    proc, pid = start_two_rank_job(cfg, tmp_path / "out")
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error: distributed run failed: rank 1 (local rank 1 on " in err
    assert "): killed by SIGKILL (exit code -9)" in err


def test_sigterm_to_one_rank_stops_all_at_one_step_with_a_checkpoint_and_resume_finishes(raw_config, tmp_path):
    reference = train(config_from_dict(raw_config("ref", accumulation=2, epochs=6)), show_progress=False)
    raw = raw_config("out", accumulation=1, epochs=6)
    cfg = write_config(raw, tmp_path / "c.yaml")
    proc, pid = start_two_rank_job(cfg, tmp_path / "out")
    os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    saved = sorted((tmp_path / "out" / "checkpoints").iterdir())[-1]
    stopped_at = json.loads((saved / "trainer_state.json").read_text())["step"]
    assert 1 <= stopped_at < reference.steps
    raw["training"]["resume"] = True
    resumed = train(config_from_dict(raw), show_progress=False)
    assert resumed.steps == reference.steps
    assert_same_losses(losses_of(tmp_path / "out"), losses_of(reference.output_dir))


def start_node_groups(cfg: Path) -> tuple[list[subprocess.Popen], list[str]]:
    """Two torchrun node groups of one rank each, meeting at a c10d rendezvous that group 0 hosts
    (`is_host`), on a port found free just before: (processes, stderr of each), the processes ended.

    The port can be taken by another process before group 0 binds it (a second later, after its
    imports); group 0 then fails at once with EADDRINUSE and the pair is started again on a new port.
    (A port of 0 would need no retry, but group 1 has to know the port before it starts.)"""
    for attempt in (1, 2):
        endpoint = f"127.0.0.1:{free_port()}"
        nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(k),
                                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "t",
                                   "--rdzv-conf", f"is_host={int(k == 0)}", "-m", "honed", "train", str(cfg), "--no-progress"],
                                  env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
        errs = [nodes[0].communicate(timeout=240)[1]]
        port_taken = nodes[0].returncode != 0 and ("EADDRINUSE" in errs[0] or "address already in use" in errs[0].lower())
        if port_taken and attempt == 1:
            nodes[1].kill()  # it waits for a store that will never come
            nodes[1].communicate()
            continue
        errs.append(nodes[1].communicate(timeout=240)[1])
        return nodes, errs
    raise AssertionError("unreachable")


def test_two_torchrun_node_groups_with_a_c10d_rendezvous_train_as_two_ranks(raw_config, tmp_path):
    one = train(config_from_dict(raw_config("one", accumulation=2)), show_progress=False)
    cfg = write_config(raw_config("two", accumulation=1), tmp_path / "two.yaml")
    nodes, errs = start_node_groups(cfg)
    for node, err in zip(nodes, errs):
        assert node.returncode == 0, err[-3000:]
    assert_same_losses(losses_of(tmp_path / "two"), losses_of(one.output_dir))


def test_fsdp_full_finetuning_on_two_ranks_equals_one_process_and_resumes_on_one(raw_config, tmp_path):
    def cfg(out, accumulation, **training):
        raw = raw_config(out, accumulation=accumulation, **training)
        raw["method"] = "full"
        raw["training"]["learning_rate"] = 1e-3
        raw["distributed"] = {"strategy": "fsdp"}
        return raw

    one = train(config_from_dict(cfg("one", 2)), show_progress=False)
    spawn_training(cfg("two", 1), world_size=2, stop_after_steps=5)
    two = tmp_path / "two"
    assert (two / "checkpoints" / "checkpoint-000005" / ".metadata").is_file()  # sharded (Distributed Checkpoint)
    train(config_from_dict(cfg("two", 1, resume=True)), show_progress=False)  # one process, no torchrun: accumulation 2
    assert_same_losses(losses_of(two), losses_of(one.output_dir))
    got, want = load_file(two / "model.safetensors"), load_file(one.output_dir / "model.safetensors")
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_fsdp_lora_on_two_ranks_saves_the_adapter_one_process_saves(raw_config, tmp_path):
    def cfg(out, accumulation):
        raw = raw_config(out, accumulation=accumulation, epochs=1)
        raw["distributed"] = {"strategy": "fsdp"}
        return raw

    one = train(config_from_dict(cfg("one", 2)), show_progress=False)
    spawn_training(cfg("two", 1), world_size=2)
    two = tmp_path / "two"
    assert_same_losses(losses_of(two), losses_of(one.output_dir))
    got, want = load_file(two / "adapter_model.safetensors"), load_file(one.output_dir / "adapter_model.safetensors")
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
    assert json.loads((two / "adapter_config.json").read_text())["r"] == 4


def test_one_process_under_torchrun_runs_ddp_and_equals_the_plain_run(raw_config, tmp_path):
    plain = train(config_from_dict(raw_config("plain", accumulation=2, epochs=1)), show_progress=False)
    spawn_training(raw_config("ddp", accumulation=2, epochs=1), world_size=1)
    info = json.loads((tmp_path / "ddp" / "run_info.json").read_text())["model"]
    assert (info["world_size"], info["strategy"]) == (1, "ddp")
    assert_same_losses(losses_of(tmp_path / "ddp"), losses_of(plain.output_dir))
