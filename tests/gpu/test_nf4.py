"""The one-kernel NF4 dequantisation (engine.nf4) against bitsandbytes' own, bit for bit.
Run on the GPU machine with `pytest -m gpu tests/gpu/test_nf4.py`."""

from __future__ import annotations

import pytest
import torch

from honed.engine.nf4 import dequantize_nf4, fusable, reference_dequantize_nf4

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-absmax"])
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize("shape", [(1024, 4096), (512, 1024), (3, 7)], ids=["65536-blocks", "8192-blocks", "odd-count"])
def test_triton_dequantisation_is_bitsandbytes_bit_for_bit(nested, blocksize, shape):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(blocksize + shape[0])
    w = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    assert fusable(packed, state)
    want = bnbf.dequantize_4bit(packed, state)
    got = dequantize_nf4(packed, state)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got, want), int((got != want).sum())
    assert torch.equal(reference_dequantize_nf4(packed, state), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_weight_dtypes(dtype):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(256, 512, device="cuda", dtype=dtype)
    packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    assert torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(packed, state))


def test_linear4bit_weights_of_a_loaded_model_take_the_kernel():
    """What QLoRA loading gives (Params4bit moved to the GPU), as the fused LoRA node sees it."""
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(1024, 512, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(512, 1024) * 0.02, requires_grad=False, quant_type="nf4")
    weight = layer.cuda().weight
    assert fusable(weight.data, weight.quant_state)
    assert torch.equal(dequantize_nf4(weight.data, weight.quant_state), bnb.functional.dequantize_4bit(weight.data, weight.quant_state))
