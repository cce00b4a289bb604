"""The plain-torch NF4 dequantisation (engine.nf4) against an element-by-element decode of the format.

The Triton kernel is checked bit for bit against bitsandbytes on the GPU (tests/gpu/test_nf4.py);
here the reference it shares its arithmetic with is checked against the format itself: high nibble
first, one absmax per block, nested absmax decoded with its own code table, scale and offset, each
fp32 operation rounded on its own."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from honed.engine.nf4 import fusable, reference_dequantize_nf4
from honed.engine.settings import resolve_engine_settings


def nested_state(count: int, blocksize: int, inner_blocksize: int, dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    blocks = -(-count // blocksize)
    inner = types.SimpleNamespace(code=torch.rand(256, generator=g) * 2 - 1, blocksize=inner_blocksize,
                                  absmax=torch.rand(-(-blocks // inner_blocksize), generator=g) + 0.5)
    state = types.SimpleNamespace(code=torch.sort(torch.rand(16, generator=g) * 2 - 1).values, blocksize=blocksize, nested=True,
                                  absmax=torch.randint(0, 256, (blocks,), generator=g, dtype=torch.uint8),
                                  state2=inner, offset=torch.tensor(0.03125), shape=torch.Size([count]), dtype=dtype, quant_type="nf4")
    packed = torch.randint(0, 256, ((count + 1) // 2, 1), generator=g, dtype=torch.uint8)
    return packed, state


def decode_one_by_one(packed, state) -> np.ndarray:
    f32 = np.float32
    code, code2 = state.code.numpy(), state.state2.code.numpy()
    bytes_ = packed.reshape(-1).numpy()
    out = np.empty(state.shape.numel(), dtype=f32)
    for i in range(out.size):
        byte = int(bytes_[i // 2])
        nibble = byte >> 4 if i % 2 == 0 else byte & 0xF
        b = i // state.blocksize
        scale = f32(f32(code2[int(state.absmax[b])]) * f32(state.state2.absmax[b // state.state2.blocksize])) + f32(state.offset)
        out[i] = f32(code[nibble]) * f32(scale)
    return out


@pytest.mark.parametrize("count,blocksize,inner", [(1024, 64, 4), (777, 64, 2), (4096, 128, 256)])
def test_reference_decodes_the_packed_format_element_by_element(count, blocksize, inner):
    packed, state = nested_state(count, blocksize, inner, dtype=torch.float32)
    got = reference_dequantize_nf4(packed, state)
    assert got.shape == (count,) and got.dtype == torch.float32
    assert np.array_equal(got.numpy(), decode_one_by_one(packed, state))


def test_reference_rounds_to_the_weight_dtype_once_from_fp32():
    packed, state = nested_state(640, 64, 4, dtype=torch.bfloat16, seed=1)
    want = torch.from_numpy(decode_one_by_one(packed, state)).to(torch.bfloat16)
    assert torch.equal(reference_dequantize_nf4(packed, state), want)


def test_without_nesting_the_absmax_is_used_as_it_is():
    packed, state = nested_state(256, 64, 4, dtype=torch.float32, seed=2)
    plain = types.SimpleNamespace(**{**vars(state), "nested": False, "absmax": torch.tensor([1.0, 2.0, 0.5, 4.0])})
    got = reference_dequantize_nf4(packed, plain)
    nibbles = torch.stack(((packed.reshape(-1) >> 4) & 0xF, packed.reshape(-1) & 0xF), -1).reshape(-1).long()
    assert torch.equal(got, state.code[nibbles] * plain.absmax.repeat_interleave(64))


def test_cpu_tensors_stay_with_bitsandbytes():
    packed, state = nested_state(256, 64, 4)
    assert not fusable(packed, state)


@pytest.mark.parametrize("device, enabled, triton, says", [
    ("cuda", True, True, "dequantised by honed's Triton kernel"),
    ("cuda", False, True, "dequantised by bitsandbytes (HONED_TRITON_NF4=0)"),
    ("cuda", True, False, "dequantised by bitsandbytes (Triton is not installed)"),
    ("cpu", True, True, "dequantised by bitsandbytes (not a CUDA device)"),
])
def test_the_fused_path_says_which_code_dequantises_nf4_weights(monkeypatch, caplog, device, enabled, triton, says):
    import logging

    from honed.config import config_from_dict
    from honed.engine import nf4
    from honed.engine.fused import FusedPath

    monkeypatch.setattr(nf4, "ENABLED", enabled)
    monkeypatch.setattr(nf4, "_triton_installed", lambda: triton)
    path = FusedPath(resolve_engine_settings(config_from_dict({"model": {"name_or_path": "unused"}, "data": {"train": ["unused.jsonl"]}}), torch.device(device)))
    model = torch.nn.Linear(4, 4)
    with caplog.at_level(logging.INFO, logger="honed.engine.fused"):
        path.log_nf4_dequantisation(model)
        assert caplog.text == ""  # no 4-bit weight, nothing to say
        model.weight.quant_state = types.SimpleNamespace(quant_type="fp4")  # bitsandbytes' other 4-bit type: not this kernel's
        path.log_nf4_dequantisation(model)
        assert caplog.text == ""
        model.weight.quant_state.quant_type = "nf4"
        path.log_nf4_dequantisation(model)
    assert says in caplog.text
