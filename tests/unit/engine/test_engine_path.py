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
from honed.engine.settings import resolve_engine_settings
from honed.model.adapters import apply_lora
from honed.testing.lora import lora_model


def tiny_lora_model(tiny_model_dir, family):
    return lora_model(tiny_model_dir(family))


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
    fused = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
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
    fused = FusedPath(resolve_engine_settings(cfg_for("checkpoint"), torch.device("cpu")))
    model = fused.prepare(model)
    model.eval()
    with torch.no_grad():
        got, _ = fused.loss_sum(model, batch)
    assert abs(float(got) - float(ref)) < 1e-4 * abs(float(ref))


def test_cpu_and_engine_plain_take_the_plain_path_and_say_so(tiny_model_dir, caplog):
    model = tiny_lora_model(tiny_model_dir, "llama3")
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        assert select_path(model, resolve_engine_settings(cfg_for(), torch.device("cpu"))).name == "plain"
        assert select_path(model, resolve_engine_settings(cfg_for(engine="plain"), torch.device("cuda"))).name == "plain"
    assert "training path: plain" in caplog.text


def test_uncovered_architecture_is_named(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gemma2"), dtype=torch.float32)
    assert "gemma2" in covers(model)


def kbit_prepared_lora_model(tiny_model_dir, family, dtype=torch.bfloat16):
    """A tiny model loaded in `dtype` and prepared as honed prepares a QLoRA model (peft's
    prepare_model_for_kbit_training, which upcasts every bf16 weight to fp32), without the 4-bit part."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), dtype=dtype)
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    return apply_lora(model, LoraSettings(r=4, alpha=8), quantized=True), loaded


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_fused_path_restores_frozen_embeddings_to_the_loaded_dtype(tiny_model_dir, family):
    model, loaded = kbit_prepared_lora_model(tiny_model_dir, family)
    lm = model.get_base_model()
    assert lm.model.embed_tokens.weight.dtype == torch.float32  # what peft leaves
    fused = FusedPath(resolve_engine_settings(cfg_for("none", precision="bf16"), torch.device("cpu")))
    model = fused.prepare(model)
    emb, head = lm.model.embed_tokens.weight, lm.lm_head.weight
    assert emb.dtype == head.dtype == torch.bfloat16
    assert not emb.requires_grad and not head.requires_grad
    assert set(fused.restored) <= {"embed_tokens", "lm_head"} and "embed_tokens" in fused.restored
    assert torch.equal(emb, loaded["model.embed_tokens.weight"])  # exact: they were upcast from bf16
    if not lm.config.tie_word_embeddings:
        assert torch.equal(head, loaded["lm_head.weight"])
    assert lm.model.norm.weight.dtype == torch.float32  # norms stay as peft left them
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # LoRA weights


def test_restored_embeddings_give_the_same_loss_and_gradients(tiny_model_dir):
    """bf16 embeddings (a bf16 residual stream) against peft's fp32 ones, both under bf16 autocast."""
    ref_model, _ = kbit_prepared_lora_model(tiny_model_dir, "llama3")
    torch.manual_seed(0)
    for name, p in ref_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    new_model = copy.deepcopy(ref_model)
    ref = FusedPath(resolve_engine_settings(cfg_for("none", precision="bf16"), torch.device("cpu")))
    ref.restore_embeddings = False
    ref_model = ref.prepare(ref_model)
    new = FusedPath(resolve_engine_settings(cfg_for("none", precision="bf16"), torch.device("cpu")))
    new_model = new.prepare(new_model)
    assert ref.restored == [] and new.restored
    assert ref_model.get_base_model().model.embed_tokens.weight.dtype == torch.float32
    batch = batch_for(ref_model, packed=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_ref, _, g_ref = loss_and_grads(ref, ref_model, batch)
        l_new, _, g_new = loss_and_grads(new, new_model, batch)
    assert abs(l_new - l_ref) < 1e-2 * abs(l_ref)
    for k in g_ref:
        err = float((g_new[k] - g_ref[k]).norm() / g_ref[k].norm().clamp_min(1e-12))
        assert err < 5e-2, (k, err)


def test_embeddings_stay_fp32_when_loaded_in_fp32_or_trained_in_fp32(tiny_model_dir):
    model, _ = kbit_prepared_lora_model(tiny_model_dir, "llama3", dtype=torch.float32)
    fused = FusedPath(resolve_engine_settings(cfg_for("none", precision="bf16"), torch.device("cpu")))
    fused.prepare(model)  # loaded in fp32: casting to bf16 would lose bits
    assert fused.restored == [] and model.get_base_model().model.embed_tokens.weight.dtype == torch.float32
    model, _ = kbit_prepared_lora_model(tiny_model_dir, "llama3")
    fused = FusedPath(resolve_engine_settings(cfg_for("none", precision="fp32"), torch.device("cpu")))
    fused.prepare(model)  # no autocast: the model computes in fp32
    assert fused.restored == [] and model.get_base_model().model.embed_tokens.weight.dtype == torch.float32


class _PathThatCanShrinkOnce:
    name = "shrinking"

    def __init__(self):
        self.recoveries = 0

    def recover_from_oom(self) -> bool:
        self.recoveries += 1
        return self.recoveries == 1


def test_out_of_memory_drops_the_partial_gradients_and_runs_the_step_again():
    from honed.engine import with_memory_fallback

    model = torch.nn.Linear(3, 1, bias=False)
    path, runs = _PathThatCanShrinkOnce(), []

    def accumulate():
        model(torch.ones(1, 3)).sum().backward()  # half the step's gradient is in .grad when memory runs out
        runs.append(1)
        if len(runs) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.5

    assert with_memory_fallback(path, model, accumulate) == 0.5
    assert len(runs) == 2 and path.recoveries == 1
    assert torch.equal(model.weight.grad, torch.ones(1, 3))  # one step's gradient, not two


def test_out_of_memory_with_no_leaner_plan_says_what_to_change():
    from honed.engine import OutOfGpuMemory, PlainPath, with_memory_fallback

    def accumulate():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfGpuMemory, match="plain path.*Tried to allocate 2.00 GiB.*training.batch_size"):
        with_memory_fallback(PlainPath(), torch.nn.Linear(1, 1), accumulate)


def test_fused_path_recovers_from_out_of_memory_with_a_leaner_plan_and_the_same_numbers(tiny_model_dir):
    plain_model = tiny_lora_model(tiny_model_dir, "llama3")
    fused_model = copy.deepcopy(plain_model)
    fused = FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu")))
    fused_model = fused.prepare(fused_model)
    n_layers = len(fused_model.get_base_model().model.layers)
    seen = [(fused.plan.mode, fused.plan.checkpointed)]
    while fused.recover_from_oom():
        seen.append((fused.plan.mode, fused.plan.checkpointed))
    assert seen[0] == ("none", 0) and seen[-1] == ("offload", n_layers) and len(seen) >= 3
    batch = batch_for(plain_model, packed=True)
    l_ref, _, g_ref = loss_and_grads(PlainPath(), plain_model, batch)
    l_f, _, g_f = loss_and_grads(fused, fused_model, batch)  # the re-applied plan: every layer once, not wrapped twice
    assert abs(l_f - l_ref) < 1e-5 * abs(l_ref)
    assert all(float((g_f[k] - g_ref[k]).norm() / g_ref[k].norm()) < 1e-4 for k in g_ref)


def test_a_partial_offload_plan_escalates_by_offloading_more_layers(tiny_model_dir, monkeypatch):
    import honed.engine.fused as fused_module
    from honed.engine.memory import MemoryPlan, apply_memory_plan

    fused = FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu")))
    fused.prepare(tiny_lora_model(tiny_model_dir, "llama3"))
    fused.plan = MemoryPlan("offload", 1, 0.0)
    apply_memory_plan(fused.decoder_layers, fused.plan)
    monkeypatch.setattr(fused_module, "available_host_bytes", lambda: 0.0)  # the host has run short meanwhile
    assert fused.recover_from_oom()
    n_layers = len(fused.decoder_layers)
    assert (fused.plan.mode, fused.plan.checkpointed) == ("offload", min(n_layers, 1 + -(-n_layers // 4)))
    assert not fused.plan.keep_o  # o_proj's outputs stay off a host without room for them


def test_fused_path_names_lora_layers_it_cannot_fuse(tiny_model_dir, caplog):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"), dtype=torch.float32)
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))
    with caplog.at_level(logging.WARNING, logger="honed.engine.fused"):
        FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu"))).prepare(model)
    assert "LoRA projections stay on peft's slower path" in caplog.text and "lora.dropout: 0" in caplog.text


@pytest.mark.parametrize("attn, padding_free", [("sdpa", False), ("eager", False), ("flash_attention_2", True)])
def test_the_plain_path_feeds_padding_free_rows_only_to_flash_attention(attn, padding_free):
    model = torch.nn.Linear(1, 1)
    model.config = type("Config", (), {"_attn_implementation": attn})()
    path = PlainPath()
    path.prepare(model)
    assert path.padding_free is padding_free


def test_honed_train_records_the_fused_paths_memory_plan(tmp_path, monkeypatch):
    """run_info.json says how the fused path kept its activations (engine_parity.py prints it)."""
    import json

    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train import model_setup, sft

    monkeypatch.setattr(model_setup, "select_path", lambda model, settings: FusedPath(settings))  # never chosen on a CPU
    base = build_tiny_model("qwen2", tmp_path / "base", hidden_size=64, layers=2)
    cfg = train_config(base, write_numbered_qa(tmp_path / "qa.jsonl"), tmp_path / "out", max_steps=2, learning_rate=1e-3, memory="offload")
    sft.train(cfg, show_progress=False)
    record = json.loads((tmp_path / "out" / "run_info.json").read_text())["model"]
    assert record["training_path"] == "fused"
    assert record["memory_plan"] | {"estimate_gib": None} == {"mode": "offload", "checkpointed": 2, "estimate_gib": None, "keep_o": True, "whole_mlp": False,
                                                            "host_mlp": 0}


def test_honed_train_keeps_gate_up_on_the_host_for_host_mlp_layers_and_records_it(tmp_path, monkeypatch):
    """training.host_mlp_layers from the config to the plan that ran (on a CPU the copies stay in place)."""
    import json

    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train import model_setup, sft

    monkeypatch.setattr(model_setup, "select_path", lambda model, settings: FusedPath(settings))  # never chosen on a CPU
    base = build_tiny_model("qwen2", tmp_path / "base", hidden_size=64, layers=2)
    cfg = train_config(base, write_numbered_qa(tmp_path / "qa.jsonl"), tmp_path / "out", max_steps=2, learning_rate=1e-3, host_mlp_layers=2)
    sft.train(cfg, show_progress=False)
    record = json.loads((tmp_path / "out" / "run_info.json").read_text())["model"]
    assert (record["memory_plan"]["mode"], record["memory_plan"]["host_mlp"]) == ("none", 2)


def test_honed_train_replays_the_stack_and_records_it(tmp_path, monkeypatch):
    """training.cuda_graphs through honed train's own loop (RerunBackend standing in for CUDA graphs
    on a CPU): a repeated shape is captured and replayed, the run is the same as without graphs, and
    run_info.json says how often each happened."""
    import json

    from honed.engine.graphs import RerunBackend
    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train import model_setup, sft

    monkeypatch.setattr(model_setup, "select_path", lambda model, settings: FusedPath(settings))
    monkeypatch.setattr(FusedPath, "graph_backend", RerunBackend)
    base = build_tiny_model("qwen2", tmp_path / "base", hidden_size=64, layers=2)
    data = write_numbered_qa(tmp_path / "qa.jsonl")
    losses = {}
    for graphs in (False, True):
        out = tmp_path / f"out-{graphs}"
        cfg = train_config(base, data, out, max_steps=4, learning_rate=1e-3, memory="checkpoint", cuda_graphs=graphs)
        losses[graphs] = sft.train(cfg, show_progress=False).losses
    record = json.loads((tmp_path / "out-True" / "run_info.json").read_text())["model"]
    # Rows are padded to each batch's longest, so shapes repeat only now and then: every micro-batch
    # either replayed or ran eagerly, and at least one repeated shape was captured and replayed.
    summary = record["cuda_graphs"]
    assert summary["replays"] + summary["eager_runs"] == 4 and summary["captures"] >= 1 and summary["replays"] >= 1, summary
    assert "cuda_graphs" not in json.loads((tmp_path / "out-False" / "run_info.json").read_text())["model"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_cuda_graphs_off_the_fused_path_are_said(tmp_path, caplog):
    from honed.testing import build_tiny_model
    from honed.testing.lora import train_config, write_numbered_qa
    from honed.train import recipe, sft

    base = build_tiny_model("qwen2", tmp_path / "base", hidden_size=64, layers=2)
    cfg = train_config(base, write_numbered_qa(tmp_path / "qa.jsonl"), tmp_path / "out", max_steps=1, learning_rate=1e-3, cuda_graphs=True)
    with caplog.at_level(logging.INFO, logger="honed.train"):
        sft.train(cfg, show_progress=False)
    assert "training.cuda_graphs: not used, the plain path has no graphs" in caplog.text
