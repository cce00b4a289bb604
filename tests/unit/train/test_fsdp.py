"""FSDP2 wrapping and sharded checkpoints in one process: what is sharded and how, the 4-bit refusal,
and the checkpoint folder's round trip, atomicity and errors (the multi-rank runs are in
tests/integration/test_fsdp_dcp.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from honed.config import DistributedConfig
from honed.errors import ConfigError, ModelError
from honed.testing.fsdp_worker import build_model, make_batches, make_optimizer, train_step
from honed.train.dist_checkpoint import full_state_dict_for_saving, is_sharded_checkpoint, load_sharded, save_sharded
from honed.train.fsdp import apply_fsdp, decoder_layers, fsdp_unsupported_reason


class Params4bit(nn.Parameter):
    """Stands in for bitsandbytes' 4-bit weight class (not installed here): FSDP2 would drop its state."""


class ShardableParams4bit(nn.Parameter):
    """A 4-bit weight class that implements FSDP2's tensor-subclass all-gather hooks."""

    def fsdp_pre_all_gather(self, mesh):  # the protocol's presence is what is checked
        raise NotImplementedError


def _quantize_one(model, cls):
    layer = decoder_layers(model)[1].mlp
    layer.down_proj.weight = cls(layer.down_proj.weight.detach().clone(), requires_grad=False)
    return model


@pytest.fixture
def qwen2(tiny_model_dir):
    return tiny_model_dir("qwen2")


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank in this process, destroyed afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_decoder_layers_of_a_model_and_of_its_peft_wrapper(qwen2):
    for lora in (False, True):
        layers = decoder_layers(build_model(qwen2, lora=lora))
        assert [type(m).__name__ for m in layers] == ["Qwen2DecoderLayer"] * 2


def test_a_4bit_base_is_refused_with_the_reason_and_what_to_do(qwen2):
    model = build_model(qwen2)
    assert fsdp_unsupported_reason(model) is None
    message = fsdp_unsupported_reason(_quantize_one(model, Params4bit))
    assert "bitsandbytes (Params4bit, e.g. model.layers.1.mlp.down_proj.weight)" in message
    assert "distributed.strategy: ddp" in message
    full = type("Cfg", (), {"method": "full"})()
    assert "drop the 4-bit quantization" in fsdp_unsupported_reason(model, full)


def test_a_4bit_class_with_fsdp2_all_gather_hooks_is_allowed(qwen2):
    assert fsdp_unsupported_reason(_quantize_one(build_model(qwen2), ShardableParams4bit)) is None


def test_apply_fsdp_needs_a_process_group(qwen2):
    with pytest.raises(ModelError, match="needs a process group: launch with torchrun"):
        apply_fsdp(build_model(qwen2), DistributedConfig(), param_dtype=None, reduce_dtype=None)


def test_apply_fsdp_refuses_a_4bit_base(qwen2, one_rank_group):
    with pytest.raises(ModelError, match="cannot shard this model: its base is quantized by bitsandbytes"):
        apply_fsdp(_quantize_one(build_model(qwen2), Params4bit), DistributedConfig(), param_dtype=None, reduce_dtype=None)


def test_apply_fsdp_refuses_mixed_trainable_dtypes_in_one_unit(qwen2, one_rank_group):
    model = build_model(qwen2)
    decoder_layers(model)[0].input_layernorm.to(torch.bfloat16)
    with pytest.raises(ModelError, match=r"in decoder layer 0 .* is float32, .*input_layernorm.weight is bfloat16"):
        apply_fsdp(model, DistributedConfig(), param_dtype=None, reduce_dtype=None)


def _dtype_inside(model) -> torch.dtype:
    seen = []
    proj = decoder_layers(model)[0].self_attn.q_proj
    handle = proj.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    model(input_ids=torch.tensor([[5, 6, 7]]))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("mixed", [True, False])
def test_apply_fsdp_shards_each_layer_and_the_root_in_the_asked_precision(qwen2, one_rank_group, mixed):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model = build_model(qwen2)
    cfg = DistributedConfig(fsdp_mixed_precision=mixed, fsdp_reshard_after_forward=True)
    apply_fsdp(model, cfg, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert isinstance(model, FSDPModule) and all(isinstance(m, FSDPModule) for m in decoder_layers(model))
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # Mixed precision: the gathered weights the layer computes with are bf16; the shards stay fp32.
    assert _dtype_inside(model) == (torch.bfloat16 if mixed else torch.float32)
    # Resharded after forward: the layer holds its shards (DTensors) again, not the gathered weights.
    assert isinstance(decoder_layers(model)[0].self_attn.q_proj.weight, DTensor)


def test_apply_fsdp_keeps_gathered_weights_when_not_resharding_after_forward(qwen2, one_rank_group):
    from torch.distributed.tensor import DTensor

    model = build_model(qwen2)
    apply_fsdp(model, DistributedConfig(fsdp_reshard_after_forward=False), param_dtype=None, reduce_dtype=None)
    model(input_ids=torch.tensor([[5, 6, 7]]))
    assert not isinstance(decoder_layers(model)[0].self_attn.q_proj.weight, DTensor)


def test_apply_fsdp_with_cpu_offload_trains_like_without(qwen2, one_rank_group):
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    batch = make_batches(64, steps=1, global_batch=2, seq=8)[0]
    results = []
    for offload in (False, True):
        model = build_model(qwen2)
        apply_fsdp(model, DistributedConfig(fsdp_cpu_offload=offload), param_dtype=None, reduce_dtype=None)
        policy = fully_shard.state(decoder_layers(model)[0])._fsdp_param_group.offload_policy
        assert isinstance(policy, CPUOffloadPolicy) == offload
        optimizer, _ = make_optimizer(model)
        results.append((train_step(model, optimizer, batch), train_step(model, optimizer, batch)))
    assert results[0] == pytest.approx(results[1], abs=1e-6)


# --- sharded checkpoints in one process (no process group: DCP reads and writes the whole tensors) ---

def _trained(folder, *, lora=False, steps=2):
    model = build_model(folder, lora=lora)
    optimizer, scheduler = make_optimizer(model)
    for batch in make_batches(64, steps=steps, global_batch=2, seq=8):
        train_step(model, optimizer, batch)
        scheduler.step()
    return model, optimizer, scheduler


def test_save_and_load_in_one_process_round_trip(qwen2, tmp_path):
    from honed.train.checkpoint import rng_state

    model, optimizer, scheduler = _trained(qwen2)
    torch.manual_seed(7)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 2, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                 files={"trainer_state.json": '{"step": 2}'})
    assert (tmp_path / "ckpt" / "trainer_state.json").read_text() == '{"step": 2}'
    assert is_sharded_checkpoint(tmp_path / "ckpt") and not is_sharded_checkpoint(tmp_path)
    fresh = build_model(qwen2)
    fresh_optimizer, fresh_scheduler = make_optimizer(fresh)
    extra = load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer)
    fresh_scheduler.load_state_dict(extra["scheduler"])
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(model.parameters(), fresh.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], fresh_optimizer.state[q][key])
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr() != [1e-2]
    assert extra["step"] == 2 and extra["saved_world_size"] == 1
    torch.testing.assert_close(extra["rng"]["torch"], torch.manual_seed(7).get_state())


def test_a_lora_checkpoint_holds_the_adapters_only(qwen2, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    model, optimizer, _ = _trained(qwen2, lora=True, steps=1)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={})
    keys = [k for k in FileSystemReader(str(tmp_path / "ckpt")).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert len(keys) == 28 and all("lora_" in k for k in keys)
    adapters = full_state_dict_for_saving(model, trainable_only=True)
    assert sorted("model." + k for k in adapters) == sorted(keys)
    assert len(full_state_dict_for_saving(model)) > 28


def test_the_exported_adapter_weights_save_as_a_peft_adapter(qwen2, tmp_path):
    from safetensors.torch import load_file

    model, _, _ = _trained(qwen2, lora=True, steps=1)
    model.save_pretrained(tmp_path / "adapter", state_dict=full_state_dict_for_saving(model, trainable_only=True))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == 28
    trained = dict(model.named_parameters())
    for name, tensor in saved.items():  # peft drops the adapter's name ("default") from the keys
        assert torch.equal(tensor, trained[name.replace(".weight", ".default.weight")]), name


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_folder(qwen2, tmp_path):
    model, optimizer, _ = _trained(qwen2, steps=1)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 1})
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    with pytest.raises(TypeError, match="ckpt: the checkpoint's extra state cannot be saved"):
        save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 2, "bad": lambda: None})  # not picklable
    with pytest.raises(TypeError, match="ckpt: the checkpoint's extra state cannot be saved .*UnpicklingError"):
        save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 2, "bad": ShardableParams4bit})  # not weights_only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    fresh = build_model(qwen2)
    assert load_sharded(tmp_path / "ckpt", fresh, make_optimizer(fresh)[0])["step"] == 1


def test_missing_partial_and_mismatched_checkpoints_are_named_errors(qwen2, tmp_path):
    model, optimizer, _ = _trained(qwen2, lora=True, steps=1)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nothing'}: no such checkpoint folder"):
        load_sharded(tmp_path / "nothing", model, optimizer)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={})
    full = build_model(qwen2)  # full fine-tuning: trains weights the LoRA checkpoint does not hold
    with pytest.raises(ConfigError, match=r"ckpt: checkpoint does not match this model/config \(it has weights for .*lora_A"):
        load_sharded(tmp_path / "ckpt", full, make_optimizer(full)[0])
    wider = build_model(qwen2, lora=True, r=8)
    with pytest.raises(ConfigError, match=r"ckpt: the sharded checkpoint cannot be read into this run \(ValueError: Size mismatch"):
        load_sharded(tmp_path / "ckpt", wider, make_optimizer(wider)[0])
    (tmp_path / "ckpt" / "__0_0.distcp").unlink()
    with pytest.raises(ConfigError, match=r"ckpt: the sharded checkpoint cannot be read into this run"):
        load_sharded(tmp_path / "ckpt", model, optimizer)
    (tmp_path / "ckpt" / ".metadata").unlink()
    with pytest.raises(ConfigError, match=r"ckpt: not a complete sharded checkpoint \(no \.metadata\)"):
        load_sharded(tmp_path / "ckpt", model, optimizer)


def test_a_ddp_wrapped_lora_model_saves_under_the_plain_names_and_loads_without_ddp(qwen2, one_rank_group, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.nn.parallel import DistributedDataParallel

    model, optimizer, _ = _trained(qwen2, lora=True, steps=1)
    save_sharded(tmp_path / "ckpt", DistributedDataParallel(model), optimizer, extra={"step": 1})
    keys = [k for k in FileSystemReader(str(tmp_path / "ckpt")).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert len(keys) == 28 and all(k.startswith("model.base_model.model.model.layers.") for k in keys)
    fresh = build_model(qwen2, lora=True)
    fresh_optimizer, _ = make_optimizer(fresh)
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer)["step"] == 1
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        assert torch.equal(p, trained[name]), name


@pytest.mark.parametrize("backend, want", [("gloo", "cpu"), ("nccl", "cuda"), ("cuda:nccl,cpu:gloo", "cuda")])
def test_the_mesh_follows_the_process_groups_backend(monkeypatch, backend, want):
    import torch.distributed as dist

    from honed.train.fsdp import _mesh_device_type

    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    assert _mesh_device_type(nn.Linear(2, 2)) == want


def test_skeleton_has_the_loaded_models_structure_without_weights_and_names_what_a_state_dict_misses(qwen2):
    from honed.config import ModelConfig
    from honed.model.load import load_model
    from honed.train.fsdp import _non_persistent_buffers, _retie, _tied_names, build_skeleton

    cfg = ModelConfig(name_or_path=str(qwen2))
    loaded, loaded_info = load_model(cfg, device=torch.device("cpu"))
    skeleton, info = build_skeleton(cfg, torch.device("cpu"))
    assert info == loaded_info
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert [(n, tuple(t.shape), t.dtype) for n, t in skeleton.state_dict().items()] == \
        [(n, tuple(t.shape), t.dtype) for n, t in loaded.state_dict().items()]
    # The rotary tables are buffers a state dict leaves out: rank 0 must send them
    assert [full for full, _, _ in _non_persistent_buffers(loaded)] == ["model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"]
    tied = _tied_names(loaded)
    assert tied == [["model.embed_tokens.weight", "lm_head.weight"]]
    loaded.to_empty(device="meta")
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight  # what _retie is for
    _retie(loaded, tied)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
