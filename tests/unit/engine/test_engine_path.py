"""The fused path on tiny models of each covered family, against the plain path (fp32, CPU).

select_path never picks the fused path on a CPU; these tests call it directly so that CI checks
its numerics: the same loss and the same gradient for every LoRA weight, whatever the memory plan.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from honed.config import LoraSettings, config_from_dict
from honed.engine import PlainPath, select_path
from honed.engine.fused import FusedPath, covers
from honed.model.adapters import apply_lora


def tiny_lora_model(tiny_model_dir, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), dtype=torch.float32)
    model = apply_lora(model, LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would hide wrong gradients of A
            p.data.normal_(0, 0.05)
    return model


def cfg_for(memory="auto", **training):
    return config_from_dict({
        "model": {"name_or_path": "unused"},
        "data": {"train": ["unused.jsonl"], "max_seq_length": 32},
        "training": {"batch_size": 2, "memory": memory, "device": "cpu", **training},
    })


def batch_for(model, packed: bool):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt that does not train
    batch = {"input_ids": ids, "labels": labels}
    if packed:  # two samples in each row, positions restart at 10
        batch["position_ids"] = torch.cat([torch.arange(10), torch.arange(14)]).expand(2, -1).clone()
    return batch


def loss_and_grads(path, model, batch):
    model.train()
    loss_sum, n = path.loss_sum(model, batch)
    (loss_sum / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(loss_sum.detach() / n), n, grads


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("memory", ["none", "checkpoint", "offload"])
def test_fused_path_matches_plain_path(tiny_model_dir, family, memory):
    plain_model = tiny_lora_model(tiny_model_dir, family)
    fused_model = copy.deepcopy(plain_model)
    assert covers(fused_model) is None
    fused = FusedPath(cfg_for(memory), torch.device("cpu"))
    fused_model = fused.prepare(fused_model)
    assert fused.plan.mode == memory
    for packed in (False, True):
        batch = batch_for(plain_model, packed)
        plain_model.zero_grad()
        fused_model.zero_grad()
        l_ref, n_ref, g_ref = loss_and_grads(PlainPath(), plain_model, batch)
        l_f, n_f, g_f = loss_and_grads(fused, fused_model, batch)
        assert n_f == n_ref
        assert abs(l_f - l_ref) < 1e-5 * abs(l_ref)
        assert g_f.keys() == g_ref.keys()
        for k in g_ref:
            err = float((g_f[k] - g_ref[k]).norm() / g_ref[k].norm().clamp_min(1e-12))
            assert err < 1e-4, (k, err)


def test_fused_path_evaluates_without_gradients(tiny_model_dir):
    model = tiny_lora_model(tiny_model_dir, "llama3")
    batch = batch_for(model, packed=False)
    ref, _ = PlainPath().loss_sum(model, batch)
    fused = FusedPath(cfg_for("checkpoint"), torch.device("cpu"))
    model = fused.prepare(model)
    model.eval()
    with torch.no_grad():
        got, _ = fused.loss_sum(model, batch)
    assert abs(float(got) - float(ref)) < 1e-4 * abs(float(ref))


def test_cpu_and_engine_plain_take_the_plain_path_and_say_so(tiny_model_dir, caplog):
    model = tiny_lora_model(tiny_model_dir, "llama3")
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        assert select_path(model, cfg_for(), torch.device("cpu")).name == "plain"
        assert select_path(model, cfg_for(engine="plain"), torch.device("cuda")).name == "plain"
    assert "training path: plain" in caplog.text


def test_uncovered_architecture_is_named(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gemma2"), dtype=torch.float32)
    assert "gemma2" in covers(model)
