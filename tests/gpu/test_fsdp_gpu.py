"""FSDP2 and sharded checkpoints on CUDA with NCCL (one rank, in this process), and the refusal of a
real bitsandbytes 4-bit base. Run on the GPU machine with `pytest -m gpu tests/gpu/test_fsdp_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from honed.config import DistributedConfig
from honed.testing.fsdp_worker import build_model, make_batches, make_optimizer, train_step
from honed.train.dist_checkpoint import load_sharded, save_sharded
from honed.train.fsdp import apply_fsdp, fsdp_unsupported_reason

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def nccl_group(tmp_path):
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _losses(model, steps=3):
    optimizer, _ = make_optimizer(model)
    # On the GPU even where FSDP keeps the weights in host memory (CPU offload).
    return [train_step(model, optimizer, b, device="cuda") for b in make_batches(1000, steps=steps, global_batch=2, seq=32)]


def test_fsdp_on_one_gpu_trains_like_the_plain_model(tiny_model_dir, nccl_group):
    folder = tiny_model_dir("qwen2")
    plain = _losses(build_model(folder).cuda())
    sharded = build_model(folder)
    apply_fsdp(sharded, DistributedConfig(fsdp_mixed_precision=False), param_dtype=None, reduce_dtype=None)
    assert next(sharded.parameters()).device.type == "cuda"
    assert _losses(sharded) == pytest.approx(plain, abs=1e-4)
    mixed = build_model(folder)
    apply_fsdp(mixed, DistributedConfig(), param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert _losses(mixed) == pytest.approx(plain, abs=5e-2)  # bf16 compute: close, not equal
    offloaded = build_model(folder)
    apply_fsdp(offloaded, DistributedConfig(fsdp_mixed_precision=False, fsdp_cpu_offload=True), param_dtype=None, reduce_dtype=None)
    assert next(offloaded.parameters()).device.type == "cpu"
    assert _losses(offloaded) == pytest.approx(plain, abs=1e-4)


def test_sharded_checkpoint_round_trip_on_gpu(tiny_model_dir, nccl_group, tmp_path):
    folder = tiny_model_dir("qwen2")
    model = build_model(folder, lora=True)
    apply_fsdp(model, DistributedConfig(), param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    optimizer, _ = make_optimizer(model)
    for batch in make_batches(1000, steps=2, global_batch=2, seq=32):
        train_step(model, optimizer, batch)
    save_sharded(tmp_path / "ckpt", model, optimizer, extra={"step": 2})
    fresh = build_model(folder, lora=True)
    apply_fsdp(fresh, DistributedConfig(), param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fresh_optimizer, _ = make_optimizer(fresh)
    assert load_sharded(tmp_path / "ckpt", fresh, fresh_optimizer)["step"] == 2
    trained = {n: p.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    for name, p in fresh.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.full_tensor(), trained[name]), name


def test_a_bitsandbytes_4bit_base_is_refused(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                      bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"), quantization_config=quantization, device_map={"": 0})
    reason = fsdp_unsupported_reason(model)
    assert reason is not None and "bitsandbytes (Params4bit" in reason


def test_rank0_loading_with_cpu_offload_fills_cpu_shards_and_gpu_buffers(tiny_model_dir, nccl_group):
    # A persistent buffer beside the offloaded shards: torch's state-dict loader refuses tensors on two
    # devices ("Multiple devices found"), so shard_from_rank0 moves the buffers to the GPU only after it.
    from honed.train.fsdp import shard_from_rank0

    folder = tiny_model_dir("qwen2")
    plain = _losses(build_model(folder).cuda())
    model = build_model(folder)
    model.model.norm.register_buffer("probe", torch.arange(4.0))  # persistent: in the state dict
    offload = DistributedConfig(fsdp_mixed_precision=False, fsdp_cpu_offload=True)
    model = shard_from_rank0(model, lambda m: apply_fsdp(m, offload, param_dtype=None, reduce_dtype=None),
                             compute_device=torch.device("cuda", 0), cpu_offload=True)
    assert next(model.parameters()).device.type == "cpu"
    assert model.model.norm.probe.device.type == "cuda" and model.model.norm.probe.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert model.model.rotary_emb.inv_freq.device.type == "cuda"
    assert _losses(model) == pytest.approx(plain, abs=1e-4)
