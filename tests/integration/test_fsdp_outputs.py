"""What an FSDP run (2 CPU ranks, gloo) leaves behind and how it loads: peft adapter files in every
checkpoint (so a run folder works wherever a model is named), weights read from disk by rank 0 only,
and an out-of-memory on one rank that stops or replans the whole job instead of hanging it.

Tiny runs only: a 2-layer model, 8 samples, a few steps."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from honed.config import config_from_dict
from honed.testing.distributed import spawn_training
from honed.train.sft import train

pytestmark = pytest.mark.slow  # spawns 2 processes


@pytest.fixture
def raw_config(tmp_path, qa_file, tiny_model_dir):
    """A tiny LoRA run as a dict: 8 samples, one row per micro-batch, loss at every step."""

    def make(out: str, *, accumulation: int, strategy: str | None = "fsdp", method: str = "lora", **training) -> dict:
        raw = {
            "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
            "method": method,
            "data": {"train": [str(qa_file)], "system_prompt": "You answer lab questions.", "max_seq_length": 96, "packing": False},
            "lora": {"r": 4, "alpha": 8},
            "training": {"output_dir": str(tmp_path / out), "epochs": 1, "batch_size": 1, "learning_rate": 5e-3, "seed": 3,
                         "tensorboard": False, "logging_steps": 1, "gradient_accumulation_steps": accumulation, "device": "cpu",
                         "lr_scheduler": "linear", **training},
        }
        if strategy:
            raw["distributed"] = {"strategy": strategy}
        return raw

    return make


def losses_of(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "train"}


def test_an_interrupted_fsdp_lora_run_leaves_peft_checkpoints_that_resolve_load_and_export(raw_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from honed.export.pipeline import export_model
    from honed.model.reference import resolve_model_reference

    one = train(config_from_dict(raw_config("one", accumulation=2, strategy=None)), stop_after_steps=2, show_progress=False)
    spawn_training(raw_config("two", accumulation=1), world_size=2, stop_after_steps=2)
    two, name = tmp_path / "two", "checkpoints/checkpoint-000002"
    ckpt = two / name
    assert (ckpt / ".metadata").is_file()  # still a sharded (resumable) checkpoint ...
    # ... that also holds every file the one-process checkpoint has beside its own resume state
    sharded_only = {".metadata", "__0_0.distcp", "__1_0.distcp", "extra.pt"}
    whole_only = {"trainable.safetensors", "optimizer.pt"}
    assert {p.name for p in ckpt.iterdir()} - sharded_only == {p.name for p in (one.output_dir / name).iterdir()} - whole_only
    got, want = load_file(ckpt / "adapter_model.safetensors"), load_file(one.output_dir / name / "adapter_model.safetensors")
    assert sorted(got) == sorted(want) and len(want) == 28  # 2 layers x 7 projections x A, B
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)

    # The run folder, named as a model: its latest checkpoint's adapter, loadable by peft.
    ref = resolve_model_reference(str(two))
    assert (ref.kind, ref.adapter) == ("run", str(ckpt))
    base = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, ref.adapter)
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"
    torch.testing.assert_close(loaded.state_dict()[key], got[key.replace(".default", "")], atol=0, rtol=0)
    assert ref.scope_prompt == "You answer lab questions."

    result = export_model(str(two), fmt="hf", out=tmp_path / "hf")
    assert result.passed and (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_under_fsdp_rank0_alone_reads_the_weights_and_trains_as_every_rank_loading(raw_config, tmp_path, method):
    def cfg(out, load):
        raw = raw_config(out, accumulation=1, method=method, learning_rate=1e-3 if method == "full" else 5e-3)
        raw["distributed"]["fsdp_load"] = load
        raw["lora"]["dropout"] = 0.1  # dropout draws from each rank's random state: it must be as if every rank had loaded
        return raw

    spawn_training(cfg("every", "every_rank"), world_size=2, record_loads=str(tmp_path / "every-loads"))
    spawn_training(cfg("rank0", "rank0"), world_size=2, record_loads=str(tmp_path / "rank0-loads"))
    assert [(tmp_path / f"every-loads.{r}").read_text() for r in (0, 1)] == ["1", "1"]
    assert [(tmp_path / f"rank0-loads.{r}").read_text() for r in (0, 1)] == ["1", "0"]  # rank 1 never read the weights
    every, rank0 = losses_of(tmp_path / "every"), losses_of(tmp_path / "rank0")
    assert sorted(every) == sorted(rank0) == [1, 2, 3, 4]
    for step in every:
        assert rank0[step] == pytest.approx(every[step], abs=1e-6), step
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    got, want = load_file(tmp_path / "rank0" / weights), load_file(tmp_path / "every" / weights)
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0)


def test_an_out_of_memory_on_one_ddp_rank_makes_every_rank_replan_and_redo_the_step(raw_config, tmp_path):
    from honed.testing.distributed import fake_out_of_memory

    one = train(config_from_dict(raw_config("one", accumulation=4, strategy=None)), show_progress=False)
    # rank 1 runs out in its first forward of step 2 (its 3rd micro-batch), where rank 0 has gone on
    fault = functools.partial(fake_out_of_memory, on_rank=1, at_call=3, record=str(tmp_path / "replans"), recoverable=True)
    spawn_training(raw_config("two", accumulation=2, strategy="ddp"), world_size=2, setup=fault)
    assert [(tmp_path / f"replans.{r}").read_text() for r in (0, 1)] == ["1", "1"]  # both replanned, once
    got, want = losses_of(tmp_path / "two"), losses_of(one.output_dir)
    assert sorted(got) == sorted(want) == [1, 2]
    for step in want:  # the redone step is the step one process takes
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    a, b = load_file(tmp_path / "two" / "adapter_model.safetensors"), load_file(one.output_dir / "adapter_model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy, in_backward, recoverable, error", [
    # DDP, in the forward, no leaner plan: every rank stops with the same error, at the same step
    ("ddp", False, False, "OutOfGpuMemory: out of GPU memory on the plain path (rank 1 of 2 ran out of GPU memory in this step"),
    # DDP, in the backward whose gradient all-reduce rank 0 has begun; FSDP, anywhere: rank 1 stops the job
    ("ddp", True, True, "RankOutOfMemory: out of GPU memory on rank 1 of 2 in the last backward of a step"),
    ("fsdp", False, True, "RankOutOfMemory: out of GPU memory on rank 1 of 2 in an FSDP step"),
])
def test_an_out_of_memory_on_one_rank_stops_the_job_with_the_rank_named_not_a_hang(raw_config, tmp_path, strategy, in_backward,
                                                                                  recoverable, error):
    from honed.testing.distributed import fake_out_of_memory

    raw = raw_config("two", accumulation=1, strategy=strategy)
    raw["distributed"]["timeout_s"] = 300  # a hang would end in a timeout error on rank 0 after 5 minutes
    fault = functools.partial(fake_out_of_memory, on_rank=1, at_call=2, record=str(tmp_path / "replans"), in_backward=in_backward,
                              recoverable=recoverable)
    with pytest.raises(Exception):
        spawn_training(raw, world_size=2, setup=fault, errors_to=str(tmp_path / "error"))
    assert (tmp_path / "error.1").read_text().startswith(error)
    assert (tmp_path / "replans.1").read_text() == "0"  # nobody retried alone
    first = (tmp_path / "error.0").read_text()
    # rank 0: the same error, or its collective failed at once when rank 1 left (gloo), not after the timeout
    assert first.startswith(error) if not recoverable else "Connection closed by peer" in first
    assert losses_of(tmp_path / "two") == {1: pytest.approx(losses_of(tmp_path / "two")[1])}  # it stopped in step 2
