"""Varlen attention on CPU: the sequence boundaries a batch gives, the plain-torch reference kernel,
how torch's `varlen_attn` is called on each torch version, and the whole transformers wiring (the
registered attention, the kwargs reaching every layer, no mask) through the fused path against the
plain path. Off the GPU the registered attention runs the reference kernel, so all of this runs here;
the flash kernel itself is checked in tests/gpu/test_varlen.py."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from honed.config import config_from_dict
from honed.data.packing import collate_packed
from honed.data.tokenize import TokenizedSample
from honed.engine import PlainPath
from honed.engine.attention import (
    VARLEN_ATTENTION,
    TorchVarlen,
    enable_varlen_attention,
    reference_varlen_attention,
    sequence_boundaries,
    varlen_attention_forward,
    varlen_batch_inputs,
    varlen_unavailable_reason,
)
from honed.engine.fused import FusedPath
from honed.engine.settings import resolve_engine_settings
from honed.errors import HonedError
from honed.testing.lora import lora_model


def sample(n, start=1):
    ids = list(range(start, start + n))
    return TokenizedSample(ids, ids[:], f"s{start}", False, n)


# ---- boundaries ---------------------------------------------------------------------------------


def test_boundaries_of_a_packed_row_of_several_samples():
    batch = collate_packed([[sample(3, 1), sample(2, 10), sample(4, 20)]])
    cu, longest = sequence_boundaries(batch["input_ids"].shape, batch["position_ids"])
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 3, 5, 9] and longest == 4


def test_trailing_padding_of_a_packed_row_is_a_sequence_of_its_own():
    batch = collate_packed([[sample(3, 1), sample(2, 10)], [sample(2, 20)]], pad_id=0)  # row 2: 2 tokens + 3 padding
    cu, longest = sequence_boundaries(batch["input_ids"].shape, batch["position_ids"])
    assert cu.tolist() == [0, 3, 5, 7, 10] and longest == 3


def test_padding_free_join_of_rows_keeps_every_sample_apart():
    batch = collate_packed([[sample(3, 1), sample(2, 10)], [sample(2, 20)]], padding_free=True)
    cu, _ = sequence_boundaries(batch["input_ids"].shape, batch["position_ids"])
    assert cu.tolist() == [0, 3, 5, 7]


def test_unpacked_rows_without_positions_are_one_sequence_each():
    cu, longest = sequence_boundaries((3, 7))
    assert cu.tolist() == [0, 7, 14, 21] and longest == 7


def test_row_edges_split_sequences_even_when_positions_run_on():
    # (1, L) positions shared by every row, as transformers makes them; no restart inside a row.
    cu, longest = sequence_boundaries((2, 4), torch.arange(4)[None])
    assert cu.tolist() == [0, 4, 8] and longest == 4


def test_padding_mask_splits_right_and_left_padding_off():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    cu, longest = sequence_boundaries((2, 5), attention_mask=mask)
    assert cu.tolist() == [0, 3, 5, 7, 10] and longest == 3


def test_batch_inputs_carry_boundaries_under_transformers_names_and_no_mask():
    batch = collate_packed([[sample(3, 1), sample(2, 10)]])
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    inputs = varlen_batch_inputs(batch)
    assert "attention_mask" not in inputs and torch.equal(inputs["position_ids"], batch["position_ids"])
    assert inputs["cu_seq_lens_q"].tolist() == inputs["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert inputs["max_length_q"] == inputs["max_length_k"] == 3


# ---- the reference kernel -----------------------------------------------------------------------


def dense_reference(q, k, v, lengths, scale, left=None):
    """Independent of the kernel under test: one softmax over all tokens, with a block-diagonal causal
    (optionally sliding-window) mask."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    i = torch.arange(q.shape[0])
    allowed = (seg[:, None] == seg[None, :]) & (i[None, :] <= i[:, None])
    if left is not None:
        allowed &= i[None, :] >= i[:, None] - left
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.einsum("qhd,khd->hqk", q, kk) * scale
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, vv)


@pytest.mark.parametrize("window", [None, 3])
def test_reference_kernel_is_per_sample_causal_attention_with_gqa(window):
    torch.manual_seed(0)
    lengths = [5, 1, 9, 4]
    q, k, v = torch.randn(19, 8, 16), torch.randn(19, 2, 16), torch.randn(19, 2, 16)
    cu = torch.tensor([0, 5, 6, 15, 19], dtype=torch.int32)
    got = reference_varlen_attention(q, k, v, cu, scale=0.3, window=(window - 1, 0) if window else (-1, 0))
    want = dense_reference(q, k, v, lengths, 0.3, left=window - 1 if window else None)
    assert torch.allclose(got, want, atol=1e-5)


# ---- calling torch's varlen_attn on each version ------------------------------------------------


class FakeVarlen:
    """Records how it was called and answers with the reference kernel (the real one needs CUDA)."""

    def __init__(self):
        self.calls = []

    def run(self, q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        self.calls.append({"kv_heads": k.shape[1], "max": (max_q, max_k), **kwargs})
        causal = kwargs.get("is_causal", kwargs.get("window_size") == (-1, 0))
        return reference_varlen_attention(q, k, v, cu_q, scale=kwargs.get("scale"), window=(-1, 0) if causal else kwargs.get("window_size", (-1, -1)))


def torch_2_10_signature(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=is_causal)

    return varlen_attn


def torch_2_11_signature(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), seqused_k=None):
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size)

    return varlen_attn


def torch_2_12_signature(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False):
        if not enable_gqa and query.shape[1] != key.shape[1]:
            raise ValueError("Expect query and key/value to have the same number of heads")
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa)

    return varlen_attn


def gqa_inputs():
    torch.manual_seed(1)
    q, k, v = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    return q, k, v, torch.tensor([0, 6, 10], dtype=torch.int32)


@pytest.mark.parametrize("signature", [torch_2_10_signature, torch_2_11_signature, torch_2_12_signature])
def test_each_torch_signature_gets_causal_scaled_gqa_attention(signature):
    fake = FakeVarlen()
    kernel = TorchVarlen(signature(fake))
    q, k, v, cu = gqa_inputs()
    got = kernel(q, k, v, cu, 6, scale=0.2)
    want = reference_varlen_attention(q, k, v, cu, scale=0.2)
    assert torch.allclose(got, want, atol=1e-5)
    call = fake.calls[-1]
    assert call["max"] == (6, 6)
    if signature is torch_2_10_signature:
        assert call["is_causal"] is True and "scale" not in call  # scale folded into q
        assert call["kv_heads"] == 4  # no GQA flag and not probed: heads repeated
    else:
        assert call["window_size"] == (-1, 0) and isinstance(call["window_size"], tuple) and call["scale"] == 0.2
    if signature is torch_2_12_signature:
        assert call["enable_gqa"] is True and call["kv_heads"] == 2


def test_a_probed_kernel_passes_fewer_key_value_heads_through():
    fake = FakeVarlen()
    kernel = TorchVarlen(torch_2_11_signature(fake))
    kernel.native_gqa = True  # what probe_native_gqa sets when the flash op takes them
    q, k, v, cu = gqa_inputs()
    kernel(q, k, v, cu, 6)
    assert fake.calls[-1]["kv_heads"] == 2


def test_sliding_window_needs_the_window_api():
    q, k, v, cu = gqa_inputs()
    fake = FakeVarlen()
    TorchVarlen(torch_2_11_signature(fake))(q, k, v, cu, 6, window=(3, 0))
    assert fake.calls[-1]["window_size"] == (3, 0)
    with pytest.raises(HonedError, match="sliding window"):
        TorchVarlen(torch_2_10_signature(FakeVarlen()))(q, k, v, cu, 6, window=(3, 0))


# ---- when the fused path takes it ---------------------------------------------------------------


def llama_like(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, **overrides)


def test_reasons_varlen_is_not_used():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "fp32" in varlen_unavailable_reason(llama_like(), device=cuda, compute_dtype=None, max_seq_length=512)
    assert "head_dim 20" in varlen_unavailable_reason(llama_like(head_dim=20), device=cuda, compute_dtype=torch.bfloat16, max_seq_length=512)
    assert "attention_dropout" in varlen_unavailable_reason(llama_like(attention_dropout=0.1), device=cuda, compute_dtype=torch.bfloat16, max_seq_length=512)
    assert "CUDA" in varlen_unavailable_reason(llama_like(), device=cpu, compute_dtype=torch.bfloat16, max_seq_length=512)


def test_fused_path_on_cpu_keeps_sdpa_and_says_why(tiny_model_dir, caplog):
    model = tiny_lora_model(tiny_model_dir, "qwen2")
    path = FusedPath(resolve_engine_settings(cfg_for("none"), torch.device("cpu")))
    with caplog.at_level(logging.INFO, logger="honed.engine"):
        path.prepare(model)
    assert path.attention == "sdpa" and path.padding_free is False
    assert "fused path: attention sdpa (varlen not used: " in caplog.text


# ---- the transformers wiring, end to end on CPU -------------------------------------------------


def tiny_lora_model(tiny_model_dir, family):
    return lora_model(tiny_model_dir(family))


def cfg_for(memory):
    return config_from_dict({
        "model": {"name_or_path": "unused"},
        "data": {"train": ["unused.jsonl"], "max_seq_length": 32},
        "training": {"batch_size": 2, "memory": memory, "device": "cpu"},
    })


def packed_batch(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[:, 10] = -100  # each sample's first label, as collate_packed sets it
    labels[1, 17] = -100
    positions = torch.stack([torch.cat([torch.arange(10), torch.arange(14)]), torch.cat([torch.arange(10), torch.arange(7), torch.arange(7)])])
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def loss_and_grads(path, model, batch):
    model.zero_grad()
    model.train()
    loss_sum, n = path.loss_sum(model, batch)
    (loss_sum / n).backward()
    return float(loss_sum.detach() / n), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("memory", ["none", "checkpoint"])
def test_fused_path_with_varlen_attention_matches_the_plain_path(tiny_model_dir, family, memory):
    plain_model = tiny_lora_model(tiny_model_dir, family)
    varlen_model = copy.deepcopy(plain_model)
    path = FusedPath(resolve_engine_settings(cfg_for(memory), torch.device("cpu")))
    varlen_model = path.prepare(varlen_model)
    lm = varlen_model.get_base_model()
    enable_varlen_attention(lm)  # prepare does this on a GPU only
    assert lm.config._attn_implementation == VARLEN_ATTENTION
    calls = []
    original = varlen_attention_forward

    def spy(module, *args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q"))
        return original(module, *args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, spy)
    try:
        batch = packed_batch(plain_model)
        l_ref, n_ref, g_ref = loss_and_grads(PlainPath(), plain_model, batch)
        l_got, n_got, g_got = loss_and_grads(path, varlen_model, batch)
    finally:
        AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    layers = lm.config.num_hidden_layers
    assert len(calls) == layers * (2 if memory == "checkpoint" else 1)  # recompute sees the boundaries too
    assert all(c is not None and c.tolist() == [0, 10, 24, 34, 41, 48] for c in calls)
    assert n_got == n_ref
    assert abs(l_got - l_ref) < 1e-5 * abs(l_ref)
    for k in g_ref:
        err = float((g_got[k] - g_ref[k]).norm() / g_ref[k].norm().clamp_min(1e-12))
        assert err < 1e-4, (k, err)


def test_a_plain_forward_of_a_padded_batch_finds_its_boundaries_from_the_mask(tiny_model_dir):
    """What scoring samples does on a model switched to varlen: model(ids, attention_mask), no boundary kwargs."""
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama3"), dtype=torch.float32)
    varlen = copy.deepcopy(sdpa)
    enable_varlen_attention(varlen)
    ids = torch.randint(5, sdpa.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = varlen(input_ids=ids, attention_mask=mask, use_cache=False).logits
    keep = mask.bool()
    assert torch.allclose(got[keep], want[keep], atol=1e-5)


def test_a_kv_cache_forward_is_refused_with_a_way_out():
    q, kv = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    with pytest.raises(HonedError, match="attn_implementation='sdpa'"):
        varlen_attention_forward(module, q, kv, kv, None)
