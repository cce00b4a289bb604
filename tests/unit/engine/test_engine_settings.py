"""EngineSettings: precision resolved once from the config, and what paths say about themselves."""

from __future__ import annotations

import pytest
import torch

from honed.config import config_from_dict
from honed.engine import PlainPath, select_path
from honed.engine.fused import FusedPath
from honed.engine.settings import EngineSettings, resolve_engine_settings
from honed.errors import ConfigError


def cfg(**training):
    return config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"], "max_seq_length": 256},
                             "training": {"batch_size": 3, **training}})


def test_auto_precision_on_a_cpu_is_fp32_without_autocast():
    s = resolve_engine_settings(cfg(), torch.device("cpu"))
    assert (s.precision, s.compute_dtype, s.fp8) == ("fp32", None, False)


def test_the_settings_carry_the_resolved_training_keys():
    s = resolve_engine_settings(cfg(precision="bf16", memory="offload", memory_budget_gib=9.5, cuda_graphs=True, embeddings_on_host=False,
                                    engine="plain"), torch.device("cpu"))
    assert (s.precision, s.compute_dtype, s.memory, s.forced_memory, s.memory_budget_gib) == ("bf16", torch.bfloat16, "offload", "offload", 9.5)
    assert (s.tokens_per_micro_batch, s.cuda_graphs, s.embeddings_on_host, s.engine) == (3 * 256, True, False, "plain")
    with pytest.raises(AttributeError):
        s.precision = "fp32"  # frozen: resolved once


def test_gradient_checkpointing_forces_recompute_only_when_memory_is_auto():
    assert resolve_engine_settings(cfg(gradient_checkpointing=True), torch.device("cpu")).forced_memory == "checkpoint"
    assert resolve_engine_settings(cfg(gradient_checkpointing=True, memory="none"), torch.device("cpu")).forced_memory == "none"
    assert resolve_engine_settings(cfg(), torch.device("cpu")).forced_memory is None


def test_fp8_on_a_cpu_stops_naming_training_precision():
    with pytest.raises(ConfigError, match=r"training\.precision=fp8: .*Use training\.precision: bf16"):
        resolve_engine_settings(cfg(precision="fp8"), torch.device("cpu"))


def test_plain_path_describes_itself():
    model = torch.nn.Linear(1, 1)
    model.config = type("Config", (), {"_attn_implementation": "sdpa"})()
    path = select_path(model, EngineSettings(torch.device("cpu"), precision="fp32"))
    path.prepare(model)
    assert isinstance(path, PlainPath) and path.describe() == {"name": "plain", "padding_free": False}


def test_fused_path_describes_its_plan_attention_embeddings_and_graphs(tiny_model_dir):
    from honed.testing.lora import lora_model

    path = FusedPath(resolve_engine_settings(cfg(memory="checkpoint"), torch.device("cpu")))
    path.prepare(lora_model(tiny_model_dir("qwen2")))
    described = path.describe()
    assert described == {
        "name": "fused", "padding_free": False, "attention": "sdpa",
        "memory_plan": {"mode": "checkpoint", "checkpointed": 2, "estimate_gib": described["memory_plan"]["estimate_gib"], "keep_o": True,
                        "whole_mlp": False, "host_mlp": 0},
        "embeddings_on_host": False, "restored_embeddings": [], "cuda_graphs": None, "cuda_graph_pool_bytes": 0, "fp8_choice": None,
        "derived_saves": True, "host_mlp_choice": None,
    }
