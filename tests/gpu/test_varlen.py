"""Varlen attention on the GPU: torch's flash varlen kernel as the fused path calls it, against an
fp32 reference (relative error ≤ 1e-2 on outputs and q/k/v gradients, bf16, GQA, uneven samples);
the fused path with varlen against the plain path on packed batches; packed samples scoring as they
do alone; and `honed train` taking it. Run on the GPU machine with
`pytest -m gpu tests/gpu/test_varlen.py -s` (-s shows the torch API and GQA mode found)."""

from __future__ import annotations

import inspect
import logging
import types

import pytest
import torch

from honed.engine.attention import (
    probe_native_gqa,
    sequence_boundaries,
    torch_varlen,
    varlen_attention_forward,
    varlen_batch_inputs,
    varlen_unavailable_reason,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOL = 1e-2


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_this_torch_has_varlen_and_the_fused_path_would_take_it():
    from transformers import LlamaConfig

    kernel = torch_varlen()
    assert kernel is not None, f"torch {torch.__version__} has no torch.nn.attention.varlen"
    native = probe_native_gqa(kernel, torch.device("cuda"))
    print(f"\ntorch {torch.__version__}: varlen_attn{inspect.signature(kernel.fn)}")
    print(f"window_size={kernel.takes_window} scale={kernel.takes_scale} enable_gqa={kernel.takes_enable_gqa} native GQA (probed)={native}")
    config = LlamaConfig(hidden_size=1024, num_attention_heads=8, num_key_value_heads=2)
    assert varlen_unavailable_reason(config, device=torch.device("cuda"), compute_dtype=torch.bfloat16, max_seq_length=2048) is None


# ---- the attention function against fp32 ------------------------------------------------------


def reference_attention(q, k, v, positions, scale, window=None):
    """fp32 per-sample causal softmax attention over (B, H, L, D) rows, samples marked by position_ids
    restarting at 0; key/value heads repeated for GQA. Returns (B, L, H, D), the attention contract."""
    b, h, n, d = q.shape
    q, k, v = q.float(), k.float().repeat_interleave(h // k.shape[1], 1), v.float().repeat_interleave(h // v.shape[1], 1)
    seg = (positions == 0).cumsum(-1)  # (B, L): sample number inside the row
    i = torch.arange(n, device=q.device)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (i[None, None, :] <= i[None, :, None])
    if window is not None:
        allowed &= i[None, None, :] > i[None, :, None] - window
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    probs = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bhkd->bqhd", probs, v)


def positions_of(rows: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows]).cuda()


def boundary_kwargs(positions):
    """The keyword arguments the model's forward hands each attention call on the varlen path."""
    inputs = varlen_batch_inputs({"input_ids": positions, "position_ids": positions})
    return {k: inputs[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("gqa", ["probed", "repeated"])
@pytest.mark.parametrize("rows", [[[37, 1, 200, 64, 129, 81]], [[100, 156], [17, 90, 149]]])
def test_varlen_attention_matches_fp32_reference_bf16(head_dim, gqa, rows):
    torch.manual_seed(0)
    kernel = torch_varlen()
    probe_native_gqa(kernel, torch.device("cuda"))
    saved = kernel.native_gqa
    if gqa == "repeated":
        kernel.native_gqa = False
    try:
        positions = positions_of(rows)
        b, n = positions.shape
        # bf16-rounded inputs, shared by both sides: the comparison measures the kernel, not the rounding.
        q, k, v = (torch.randn(b, h, n, head_dim, device="cuda").bfloat16() for h in (8, 2, 2))
        up = torch.randn(b, n, 8, head_dim, device="cuda")
        scale = 0.11  # not head_dim**-0.5: checks the scale reaches the kernel
        kwargs = boundary_kwargs(positions)
        module = types.SimpleNamespace(is_causal=True, training=True, layer_idx=0)

        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out, _ = varlen_attention_forward(module, *xs, None, scaling=scale, **kwargs)
        assert out.shape == (b, n, 8, head_dim) and out.dtype == torch.bfloat16
        (out.float() * up).sum().backward()
        refs = [x.float().requires_grad_(True) for x in (q, k, v)]
        want = reference_attention(*refs, positions, scale)
        (want * up).sum().backward()
        assert torch.isfinite(out).all()
        assert rel(out, want) <= TOL, rel(out, want)
        for name, got, ref in zip("qkv", xs, refs):
            assert got.grad.shape == ref.grad.shape
            assert rel(got.grad, ref.grad) <= TOL, (name, rel(got.grad, ref.grad))
    finally:
        kernel.native_gqa = saved


def test_sliding_window_matches_fp32_reference_bf16():
    kernel = torch_varlen()
    if not kernel.takes_window:
        pytest.skip(f"torch {torch.__version__}'s varlen_attn takes no window (the fused path then keeps SDPA for windowed models)")
    torch.manual_seed(1)
    positions = positions_of([[300, 45, 167]])
    q, k, v = (torch.randn(1, h, 512, 64, device="cuda").bfloat16() for h in (8, 2, 2))
    kwargs = boundary_kwargs(positions)
    module = types.SimpleNamespace(is_causal=True, training=False, layer_idx=0)
    out, _ = varlen_attention_forward(module, q, k, v, None, scaling=64**-0.5, sliding_window=64, **kwargs)
    want = reference_attention(q, k, v, positions, 64**-0.5, window=64)
    assert rel(out, want) <= TOL


# ---- the fused path ------------------------------------------------------------------------------


def lora_model(folder, dtype):
    from honed.testing.lora import lora_model as build

    return build(folder, dtype=dtype, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")


def config_for(folder, memory="none"):
    from honed.testing.lora import path_config

    return path_config(folder, memory=memory, precision="bf16")


def packed_batch(vocab: int, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Rows of samples end to end, as collate_packed makes them: positions restart, first labels -100."""
    g = torch.Generator().manual_seed(7)
    positions = positions_of(rows)
    ids = torch.randint(5, vocab, positions.shape, generator=g).cuda()
    labels = ids.clone()
    labels[positions == 0] = -100
    labels[positions < 12] = -100  # a short prompt per sample that does not train
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def joined(batch):
    """The same samples as one row without padding (what `collate(..., padding_free=True)` gives)."""
    return {k: v.reshape(1, -1) for k, v in batch.items()}


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("memory", ["none", "checkpoint"])
def test_fused_path_with_varlen_matches_plain_path_on_packed_batch(tmp_path_factory, family, memory):
    """bf16 varlen strays from the fp32 plain reference no further than the plain bf16 (SDPA) path
    does — the same bound as tests/gpu/test_engine.py's fused-vs-plain test."""
    from honed.engine import PlainPath
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model

    folder = build_tiny_model(family, tmp_path_factory.mktemp(family), hidden_size=256, layers=3)
    probe = lora_model(folder, torch.float32)
    rows = packed_batch(probe.config.vocab_size, [[100, 156], [37, 90, 129]])
    del probe

    def run_path(dtype, fused, batch):
        model = lora_model(folder, dtype)
        path = FusedPath(resolve_engine_settings(config_for(folder, memory), torch.device("cuda"))) if fused else PlainPath()
        model = path.prepare(model)
        if fused:
            assert path.attention == "varlen" and path.padding_free
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            s, n = path.loss_sum(model, batch)
        (s / n).backward()
        return float(s.detach() / n), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = run_path(torch.float32, False, rows)
    p16_loss, p16 = run_path(torch.bfloat16, False, rows)
    for batch in (rows, joined(rows)):
        f16_loss, f16 = run_path(torch.bfloat16, True, batch)
        assert abs(f16_loss - ref_loss) <= 0.01 * ref_loss, (f16_loss, ref_loss)
        for k in ref:
            assert f16[k].dtype == torch.float32
            assert rel(f16[k], ref[k]) <= 1.5 * rel(p16[k], ref[k]) + 1e-2, (k, rel(f16[k], ref[k]), rel(p16[k], ref[k]))


def per_sample(path, model, batch, owner, count):
    """Each sample's final hidden states and summed loss (the batch's loss with every other sample's
    labels ignored); `owner` numbers each token's sample, -1 for padding."""
    lm = model.get_base_model()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = lm.model(**varlen_batch_inputs(batch), use_cache=False).last_hidden_state.float()
        losses = [float(path.loss_sum(model, {**batch, "labels": torch.where(owner == i, batch["labels"], -100)})[0]) for i in range(count)]
    return [hidden[owner == i] for i in range(count)], losses


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_packed_samples_score_as_they_do_one_per_row(tmp_path_factory, family):
    """No cross-contamination: in one padding-free row, each sample's hidden states and loss are those
    it has in a padded batch of one sample per row (boundaries from the attention mask there). The
    same row with positions that never restart (samples attending to each other) shows how far
    contamination moves the hidden states, so the bound is known to be tight enough to catch it."""
    from honed.engine.fused import FusedPath
    from honed.engine.settings import resolve_engine_settings
    from honed.testing import build_tiny_model

    folder = build_tiny_model(family, tmp_path_factory.mktemp(family), hidden_size=256, layers=3)
    model = lora_model(folder, torch.bfloat16)
    path = FusedPath(resolve_engine_settings(config_for(folder), torch.device("cuda")))
    model = path.prepare(model)
    assert path.attention == "varlen"
    model.eval()
    lengths = [61, 140, 23, 200, 88]
    packed = joined(packed_batch(model.config.vocab_size, [lengths]))
    packed_owner = (packed["position_ids"] == 0).cumsum(-1) - 1

    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long, device="cuda")
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    start = 0
    for row, n in enumerate(lengths):
        ids[row, :n], labels[row, :n], mask[row, :n] = packed["input_ids"][0, start:start + n], packed["labels"][0, start:start + n], 1
        start += n
    rows = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    rows_owner = torch.where(mask.bool(), torch.arange(len(lengths), device="cuda")[:, None], -1)
    attending_across = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1], device="cuda")[None]}

    alone_h, alone_l = per_sample(path, model, rows, rows_owner, len(lengths))
    together_h, together_l = per_sample(path, model, packed, packed_owner, len(lengths))
    across_h, _ = per_sample(path, model, attending_across, packed_owner, len(lengths))
    dev = max(rel(a, b) for a, b in zip(together_h, alone_h))
    leak = min(rel(a, b) for a, b in zip(across_h[1:], alone_h[1:]))  # the first sample has nothing before it
    loss_dev = max(abs(a - b) / b for a, b in zip(together_l, alone_l))
    print(f"\n{family}: hidden states packed vs one per row {dev:.2e} (attending across: {leak:.2e}); losses {loss_dev:.2e}")
    assert dev <= 2e-2 and dev <= 0.2 * leak, (dev, leak)
    assert loss_dev <= 1e-2, loss_dev


def test_a_plain_forward_of_a_padded_batch_on_a_varlen_model_matches_sdpa(tmp_path):
    """What scoring samples does on a model the fused path switched to varlen: model(ids, mask) with no
    boundary kwargs; the boundaries come from the mask inside each layer."""
    from transformers import AutoModelForCausalLM

    from honed.engine.attention import enable_varlen_attention
    from honed.testing import build_tiny_model

    folder = build_tiny_model("qwen2", tmp_path / "m", hidden_size=256, layers=2)
    sdpa = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    varlen = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    enable_varlen_attention(varlen)
    ids = torch.randint(5, sdpa.config.vocab_size, (3, 150), generator=torch.Generator().manual_seed(2)).cuda()
    mask = torch.ones_like(ids)
    mask[1, 90:] = 0
    mask[2, 20:] = 0
    with torch.no_grad():
        want = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        got = varlen(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    keep = mask.bool()
    assert rel(got[keep], want[keep]) <= TOL


@pytest.mark.parametrize("packing", [True, False])
def test_honed_train_takes_varlen_attention_padding_free(tmp_path, caplog, packing):
    from honed.testing.lora import tiny_train_losses

    with caplog.at_level(logging.INFO, logger="honed.engine"):
        losses = tiny_train_losses(tmp_path, "qwen2", {"out": {"packing": packing}}, max_steps=60, learning_rate=3e-3)["out"]
    assert "fused path: attention varlen" in caplog.text
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_boundaries_of_a_gpu_batch_are_found_on_the_cpu():
    positions = positions_of([[5, 3], [8]])
    cu, longest = sequence_boundaries(positions.shape, positions)
    assert cu.device.type == "cpu" and cu.tolist() == [0, 5, 8, 16] and longest == 8
    inputs = varlen_batch_inputs({"input_ids": positions, "position_ids": positions})
    assert inputs["cu_seq_lens_q"].is_cuda and inputs["cu_seq_lens_q"].dtype == torch.int32
