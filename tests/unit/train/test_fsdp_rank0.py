"""FSDP rank-0 loading in one process: which runs load on rank 0 alone, and a LoRA run continued from a
saved adapter (`lora.init_from`) on the weightless skeleton the other ranks build (the multi-rank runs
are in tests/integration/test_fsdp_rank0_load.py)."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from honed.config import ModelConfig, config_from_dict
from honed.train.distributed import DistContext
from honed.train.sharding import loads_on_rank0

TWO_RANKS = DistContext(rank=1, world_size=2, backend="gloo")


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    def make(model=None, **sections):
        raw = {"model": {"name_or_path": str(model or tiny_model_dir("qwen2"))}, "data": {"train": ["x.jsonl"]},
               "training": {"output_dir": str(tmp_path / "out")}, "distributed": {"strategy": "fsdp"}}
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return config_from_dict(raw)

    return make


def test_rank0_loads_alone_only_for_an_unquantized_fsdp_model_on_several_ranks(cfg, tiny_model_dir, tmp_path):
    def decide(c, ctx=TWO_RANKS):
        return loads_on_rank0(c, ctx, torch.device("cpu"), c.model)

    assert decide(cfg()) is True
    assert decide(cfg(method="full")) is True
    assert decide(cfg(distributed={"fsdp_load": "every_rank"})) is False
    assert decide(cfg(), DistContext()) is False  # no torchrun
    assert decide(cfg(), DistContext(world_size=1, backend="gloo")) is False
    assert decide(cfg(distributed={"strategy": "auto"})) is False  # auto on CPUs: ddp, every rank holds the model
    assert decide(cfg(method="qlora")) is False  # a 4-bit base is never sharded: every rank loads and refuses alike
    # A checkpoint saved quantized (read from config.json alone): its skeleton would not be the loaded model
    folder = tmp_path / "tiny-bnb-4bit"
    shutil.copytree(tiny_model_dir("qwen2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    assert decide(cfg(model=folder)) is False
    assert decide(cfg(model=folder, method="full")) is False


def test_a_saved_adapter_on_the_skeleton_has_the_loaded_runs_weights_and_no_warning_per_weight(cfg, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from honed.model.load import load_model
    from honed.train.fsdp import build_skeleton
    from honed.train.model_setup import finish_training_model

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2")),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    c = cfg(lora={"init_from": str(tmp_path / "adapter")})  # r and targets come from the folder, not lora.r
    loaded, _ = finish_training_model(*load_model(c.model, device=torch.device("cpu")), c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skeleton, _ = finish_training_model(*build_skeleton(ModelConfig(name_or_path=c.model.name_or_path), torch.device("cpu")), c)
    # torch would warn once per adapter weight that copying into a meta tensor does nothing
    assert not [w for w in caught if "meta parameter" in str(w.message)]
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    # the same names, shapes, dtypes and trainable weights as rank 0's model: its state dict fills them
    assert [(n, tuple(t.shape), t.dtype) for n, t in skeleton.state_dict().items()] == \
        [(n, tuple(t.shape), t.dtype) for n, t in loaded.state_dict().items()]
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert [n for n, p in skeleton.named_parameters() if p.requires_grad] == trainable and len(trainable) == 8  # 2 layers x q, v x A, B
