"""FSDP rank-0 loading (`distributed.fsdp_load: rank0`) combined with the other FSDP options, on 2 CPU
ranks (gloo): with CPU offload, with a LoRA run continued from a saved adapter (`lora.init_from`) and
resumed from its sharded checkpoint on another number of ranks, each against every rank loading; and
a checkpoint saved 4-bit, which every rank must refuse alike.

Tiny runs only: a 2-layer model, 8 samples, a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from honed.testing.distributed import spawn_training

pytestmark = pytest.mark.slow  # spawns 2 and 4 processes


@pytest.fixture
def raw_config(tmp_path, qa_file, tiny_model_dir):
    """A tiny FSDP run as a dict: 8 samples, one row per micro-batch, loss at every step."""

    def make(out: str, load: str, *, method: str = "lora", accumulation: int = 1, epochs: int = 1, dropout: float = 0.0,
             model: Path | None = None, **distributed) -> dict:
        return {
            "model": {"name_or_path": str(model or tiny_model_dir("qwen2"))},
            "method": method,
            "data": {"train": [str(qa_file)], "system_prompt": "You answer lab questions.", "max_seq_length": 96, "packing": False},
            "lora": {"r": 4, "alpha": 8, "dropout": dropout},
            "training": {"output_dir": str(tmp_path / out), "epochs": epochs, "batch_size": 1, "seed": 3, "device": "cpu",
                         "learning_rate": 1e-3 if method == "full" else 5e-3, "tensorboard": False, "logging_steps": 1,
                         "gradient_accumulation_steps": accumulation, "lr_scheduler": "linear"},
            "distributed": {"strategy": "fsdp", "fsdp_load": load, **distributed},
        }

    return make


def losses_of(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["kind"] == "train"}


def assert_same_losses(got: dict[int, float], want: dict[int, float], *, atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want) and want
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=atol), step


def assert_same_weights(got: Path, want: Path, *, atol: float = 1e-6) -> None:
    """The same tensors in two safetensors files."""
    x, y = load_file(got), load_file(want)
    assert sorted(x) == sorted(y) and y
    for key in y:
        torch.testing.assert_close(x[key], y[key], atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


def assert_same_run(got: Path, want: Path, weights: str, *, atol: float = 1e-6) -> None:
    """The same loss at every step and the same saved weights (`weights`, a file in each run folder)."""
    assert_same_losses(losses_of(got), losses_of(want), atol=atol)
    assert_same_weights(got / weights, want / weights, atol=atol)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_rank0_loading_with_cpu_offload_trains_as_every_rank_loading(raw_config, tmp_path, method):
    # dropout draws from each rank's random state: rank 0's must reach rank 1 under offload too
    for load in ("every_rank", "rank0"):
        spawn_training(raw_config(load, load, method=method, dropout=0.1, fsdp_cpu_offload=True), world_size=2,
                       record_loads=str(tmp_path / f"{load}-loads"))
    assert [(tmp_path / f"rank0-loads.{r}").read_text() for r in (0, 1)] == ["1", "0"]  # rank 1 never read the weights
    assert_same_run(tmp_path / "rank0", tmp_path / "every_rank", "adapter_model.safetensors" if method == "lora" else "model.safetensors")


@pytest.fixture
def saved_adapter(tiny_model_dir, tmp_path):
    """A peft adapter of the tiny model with LoRA B away from zero (a fresh one would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_rank0_loading_continues_a_saved_adapter_on_every_rank_and_resumes_on_four_ranks(raw_config, tmp_path, saved_adapter):
    def cfg(out, load, **extra):
        raw = raw_config(out, load, accumulation=2, epochs=2)  # 2 ranks x 2 micro-batches: 2 steps an epoch, 4 in all
        raw["lora"]["init_from"] = str(saved_adapter)
        raw["training"].update(extra)
        return raw

    spawn_training(cfg("every", "every_rank"), world_size=2)
    spawn_training(cfg("rank0", "rank0"), world_size=2, stop_after_steps=2)
    every, rank0 = tmp_path / "every", tmp_path / "rank0"
    ckpt = "checkpoints/checkpoint-000002"
    assert (rank0 / ckpt / ".metadata").is_file()  # sharded
    # Up to the interruption, the same run: rank 1's shards of the saved adapter came from rank 0
    assert_same_losses(losses_of(rank0), {s: v for s, v in losses_of(every).items() if s <= 2})
    assert_same_weights(rank0 / ckpt / "adapter_model.safetensors", every / ckpt / "adapter_model.safetensors")
    # ... and it went on from the saved adapter: two small steps moved LoRA B little from where it was
    # (a fresh adapter starts B at 0, 0.2 standard deviations away)
    first, at_two = load_file(saved_adapter / "adapter_model.safetensors"), load_file(rank0 / ckpt / "adapter_model.safetensors")
    assert sorted(first) == sorted(at_two)
    for key in (k for k in first if "lora_B" in k):
        assert float((at_two[key] - first[key]).abs().max()) < 0.05, key

    # Resumed on 4 ranks (accumulation 2 becomes 1, the same 4 micro-batches a step), rank 0 alone
    # reading the base again: the uninterrupted curve and adapter (4 ranks add up in another order)
    spawn_training(cfg("rank0", "rank0", resume=True), world_size=4, record_loads=str(tmp_path / "resume-loads"))
    assert [(tmp_path / f"resume-loads.{r}").read_text() for r in range(4)] == ["1", "0", "0", "0"]
    assert sorted(losses_of(rank0)) == [1, 2, 3, 4]
    assert_same_run(rank0, every, "adapter_model.safetensors", atol=1e-5)


def test_a_checkpoint_saved_4bit_is_loaded_and_refused_alike_on_every_rank(raw_config, tmp_path, tiny_model_dir):
    # A weightless skeleton of a `*-bnb-4bit` checkpoint is not the quantized model rank 0 would
    # load: rank 1 would go on to shard it while rank 0 stops. Every rank loads it and stops the same way.
    folder = tmp_path / "tiny-bnb-4bit"
    shutil.copytree(tiny_model_dir("qwen2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(config))
    raw = raw_config("out", "rank0", model=folder, timeout_s=60)
    with pytest.raises(Exception):
        spawn_training(raw, world_size=2, errors_to=str(tmp_path / "error"))
    errors = [(tmp_path / f"error.{r}").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert errors[0].startswith(f"ModelError: {folder}: 4-bit (QLoRA / bnb-4bit) models need a CUDA GPU")
