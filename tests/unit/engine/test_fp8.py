"""`training.precision: fp8` on a CPU: the config and device checks, the e4m3 quantisation, and the
conversion of a tiny model's LoRA bases (torch has float8_e4m3fn on the CPU, and without CUDA the fp8
matmul runs as its plain-torch reference, so everything but `torch._scaled_mm` is checked here;
tests/gpu/test_fp8.py checks that on the GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from honed.config import TrainingConfig, config_from_dict
from honed.engine.fp8 import (
    E4M3_MAX,
    FP8_DTYPE,
    SCALE_NAME,
    check_fp8_device,
    convert_lora_bases_to_fp8,
    dequantize_weight,
    fp8_device_problem,
    fp8_dgrad,
    fp8_linear,
    prepare_fp8,
    quantize_rows,
    quantize_weight_rowwise,
    reference_fp8_dgrad,
    reference_fp8_linear,
    refuse_fp8_off_the_fused_path,
)
from honed.engine.fused import FusedPath
from honed.engine.lora import lora_linear, reference_lora_linear
from honed.engine.settings import EngineSettings, resolve_engine_settings, resolve_precision
from honed.errors import ConfigError, ModelError
from honed.testing.lora import lora_model
from honed.utils.precision import autocast_context

# e4m3 keeps 3 mantissa bits: rounding is at most half a step, 2^-4 of the value, and on Gaussian
# values about 2.6% in RMS (2^-3 / sqrt(24)); 3.5% leaves room for the draw.
E4M3_HALF_STEP = 2**-4
E4M3_RMS_BOUND = 0.035


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def cfg_with(**keys):
    raw = {"model": {"name_or_path": "unused"}, "data": {"train": ["unused.jsonl"], "max_seq_length": 32}}
    training = {"batch_size": 2, "memory": "none", "device": "cpu"}
    training.update(keys.pop("training", {}))
    return config_from_dict({**raw, **keys, "training": training})


# ---- config and device checks ---------------------------------------------------------------


def test_config_accepts_fp8_and_describes_it():
    assert cfg_with(training={"precision": "fp8"}).training.precision == "fp8"
    description = TrainingConfig.model_fields["precision"].description
    assert "fp8" in description and "lora" in description and "8.9" in description


@pytest.mark.parametrize("method, hint", [("qlora", "already 4-bit"), ("full", "trains every weight")])
def test_fp8_needs_method_lora(method, hint):
    with pytest.raises(ConfigError) as err:
        cfg_with(method=method, training={"precision": "fp8"})
    message = str(err.value)
    assert "training.precision=fp8" in message and hint in message
    assert "method: lora" in message and "training.precision: bf16" in message  # both ways out


def test_fp8_needs_the_fused_engine():
    with pytest.raises(ConfigError, match=r"training\.precision=fp8 runs only on honed's fused engine.*training\.engine: auto"):
        cfg_with(training={"precision": "fp8", "engine": "plain"})


def test_fp8_on_a_cpu_stops_naming_the_key_and_what_to_do():
    with pytest.raises(ConfigError, match=r"training\.precision=fp8: .*CUDA GPU of compute capability 8\.9.*on cpu\. Use training\.precision: bf16"):
        resolve_precision("fp8", torch.device("cpu"))


def test_fp8_on_a_gpu_older_than_ada_stops(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    problem = fp8_device_problem(torch.device("cuda"))
    assert "NVIDIA A100" in problem and "8.0" in problem and "8.9" in problem
    with pytest.raises(ConfigError, match=r"training\.precision=fp8"):
        check_fp8_device(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_device_problem(torch.device("cuda")) is None
    assert resolve_precision("fp8", torch.device("cuda")) == "fp8"


def test_honed_train_with_fp8_on_a_cpu_stops_before_loading_the_model(tmp_path):
    from honed.train.sft import train

    cfg = cfg_with(training={"precision": "fp8", "output_dir": str(tmp_path / "run"), "tensorboard": False})
    cfg.model.name_or_path = str(tmp_path / "no-such-model")  # never reached: the precision check comes first
    with pytest.raises(ConfigError, match=r"training\.precision=fp8"):
        train(cfg, show_progress=False)


def test_fp8_computes_in_bf16_under_autocast():
    with autocast_context("fp8", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_a_path_that_is_not_fused_refuses_fp8(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gemma2"), dtype=torch.float32)
    assert refuse_fp8_off_the_fused_path(model, EngineSettings(torch.device("cpu"), precision="bf16")) is None  # not fp8: not its business
    with pytest.raises(ConfigError, match=r"training\.precision=fp8 runs only on honed's fused path.*on cpu"):
        refuse_fp8_off_the_fused_path(model, EngineSettings(torch.device("cpu"), precision="fp8"))


# ---- quantisation ---------------------------------------------------------------------------


def test_weight_quantisation_round_trips_within_e4m3_rounding():
    torch.manual_seed(0)
    w = torch.randn(96, 64) * torch.logspace(-3, 1, 96)[:, None]  # rows four decades apart
    w_fp8, scale = quantize_weight_rowwise(w.bfloat16())
    assert w_fp8.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == (96,)
    back = dequantize_weight(w_fp8, scale, torch.float32)
    w = w.bfloat16().float()
    # Half a step of the value, or of the smallest (subnormal) step 2^-9 · scale near zero.
    assert ((back - w).abs() <= E4M3_HALF_STEP * w.abs() + scale[:, None] * 2**-10 + 1e-12).all()
    for row in range(0, 96, 12):  # each row as exact as any other, whatever its magnitude
        assert rel(back[row], w[row]) <= E4M3_RMS_BOUND


def test_weight_scale_is_per_output_channel():
    torch.manual_seed(1)
    w = torch.randn(32, 48)
    w_fp8, scale = quantize_weight_rowwise(w)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / E4M3_MAX)
    assert (w_fp8.float().abs().amax(dim=1) == E4M3_MAX).all()  # each row's largest value uses the full range
    louder = w.clone()
    louder[5] *= 2**10
    l_fp8, l_scale = quantize_weight_rowwise(louder)
    assert l_scale[5] == scale[5] * 2**10  # only that channel's scale moves
    keep = torch.arange(32) != 5
    assert torch.equal(l_scale[keep], scale[keep])
    assert torch.equal(l_fp8.view(torch.uint8), w_fp8.view(torch.uint8))  # and the stored codes are the same


def test_activation_rows_get_their_own_scale_and_zero_rows_stay_finite():
    x = torch.randn(6, 32)
    x[2] = 0.0
    x[4] *= 1000
    x_fp8, scale = quantize_rows(x)
    assert x_fp8.dtype == FP8_DTYPE and scale.shape == (6, 1)
    back = x_fp8.float() * scale
    assert torch.isfinite(back).all() and (back[2] == 0).all()
    for row in (0, 1, 3, 4, 5):
        assert rel(back[row], x[row]) <= 0.05  # one row of 32 values: a looser draw than a whole matrix


def test_fp8_linear_on_cpu_is_its_reference_and_keeps_the_input_dtype():
    torch.manual_seed(2)
    x, w, bias = torch.randn(10, 32), torch.randn(48, 32) * 0.05, torch.randn(48)
    w_fp8, scale = quantize_weight_rowwise(w)
    y = fp8_linear(x, w_fp8, scale, bias)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference_fp8_linear(x, w_fp8, scale, bias))
    assert rel(y, x @ w.t() + bias) <= 2 * E4M3_RMS_BOUND  # x and W each rounded once
    assert fp8_linear(x.bfloat16(), w_fp8, scale, bias.bfloat16()).dtype == torch.bfloat16


def test_fp8_dgrad_folds_the_weight_scale_into_the_gradient_rows():
    """dx = dy W with W ≈ W_fp8 · scale[:, None]: the scale of output channel j multiplies column j of
    dy before dy's rows are rounded to e4m3. Channels four decades apart would miss by orders of
    magnitude if it were applied along the other axis, or after the rounding of a row dominated by
    one large channel."""
    torch.manual_seed(4)
    w = torch.randn(48, 32) * torch.logspace(-3, 1, 48)[:, None]
    dy = torch.randn(10, 48)
    w_fp8, scale = quantize_weight_rowwise(w)
    dense = dequantize_weight(w_fp8, scale, torch.float32)
    got = fp8_dgrad(dy, w_fp8, scale)
    assert got.dtype == torch.float32 and got.shape == (10, 32)
    torch.testing.assert_close(got, reference_fp8_dgrad(dy, w_fp8, scale))  # on a CPU it is its reference
    assert 0 < rel(got, dy @ dense) <= E4M3_RMS_BOUND  # dy·scale rounded once: an e4m3 step, no more
    # The rounding is of dy·scale, row by row. Rows of dy·scale whose entries are ±2^k with amax 8 scale to
    # ±448·2^-j, all exact in e4m3, so such a dy passes unrounded; with the scale on the wrong axis it would not.
    powers = torch.randint(0, 4, (10, 48)).float().exp2() * torch.randint(0, 2, (10, 48)).float().mul(2).sub(1)
    powers[:, 0] = 8.0
    exact = powers / scale
    assert rel(fp8_dgrad(exact, w_fp8, scale), exact @ dense) <= 1e-6
    assert fp8_dgrad(dy.bfloat16(), w_fp8, scale).dtype == torch.bfloat16


def test_an_fp8_weight_that_lost_its_pairing_is_an_error_not_garbage():
    w_fp8, scale = quantize_weight_rowwise(torch.randn(16, 16))
    with pytest.raises(ModelError, match="fp8 base weight lost its pairing"):
        fp8_linear(torch.randn(2, 16), w_fp8.to(torch.bfloat16), scale)  # e.g. after model.to(bfloat16)
    with pytest.raises(ModelError, match="fp8 base weight lost its pairing"):
        lora_linear(torch.randn(2, 16), w_fp8, torch.randn(2, 16), torch.randn(16, 2), 1.0)  # no scale given


# ---- the fused LoRA node over an fp8 base ---------------------------------------------------


def test_lora_linear_over_an_fp8_base_matches_the_reference_of_its_dequantised_weights():
    torch.manual_seed(3)
    x = torch.randn(3, 7, 64)
    w = torch.randn(48, 64) * 0.05
    a, b, bias = torch.randn(4, 64) * 0.1, torch.randn(48, 4) * 0.1, torch.randn(48) * 0.1
    w_fp8, scale = quantize_weight_rowwise(w)
    dense = dequantize_weight(w_fp8, scale, torch.float32)
    up = torch.randn(3, 7, 48)

    xs, as_, bs = (t.clone().requires_grad_(True) for t in (x, a, b))
    got = lora_linear(xs, w_fp8, as_, bs, 2.0, bias, fp8_scale=scale)
    (got * up).sum().backward()
    xr, ar, br = (t.clone().requires_grad_(True) for t in (x, a, b))
    want = reference_lora_linear(xr, dense, ar, br, 2.0, bias)
    (want * up).sum().backward()

    # Forward: only x's rounding to e4m3 differs. The adapter's gradients read the unrounded x and dy, so
    # in fp32 they are the reference's to float rounding; dx's base part is dy W with dy·scale rounded to
    # e4m3 (fp8_dgrad), its LoRA part exact.
    assert rel(got, want) <= E4M3_RMS_BOUND
    for g, r in ((as_.grad, ar.grad), (bs.grad, br.grad)):
        assert rel(g, r) <= 1e-5
    dy = up.reshape(-1, 48)
    lora_part = (2.0 * dy @ b) @ a
    torch.testing.assert_close(xs.grad.reshape(-1, 64), reference_fp8_dgrad(dy, w_fp8, scale) + lora_part, rtol=1e-5, atol=1e-5)
    assert 0 < rel(xs.grad, xr.grad) <= E4M3_RMS_BOUND


# ---- a tiny model's LoRA bases --------------------------------------------------------------


def tiny_lora_model(tiny_model_dir, dtype=torch.float32):
    return lora_model(tiny_model_dir("llama3"), dtype=dtype)


def base_layers(model):
    return [m.base_layer for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]


def batch_for(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    return {"input_ids": ids, "labels": labels}


def test_conversion_halves_the_bf16_base_weights_and_keeps_peft_s_layout(tiny_model_dir):
    model = tiny_lora_model(tiny_model_dir, torch.bfloat16)
    names_before = [n for n, _ in model.named_modules()]
    bases = base_layers(model)
    bf16_bytes = sum(b.weight.numel() * b.weight.element_size() for b in bases)
    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}

    assert convert_lora_bases_to_fp8(model) == len(bases) == 2 * 7  # 2 layers × q k v o gate up down
    assert [n for n, _ in model.named_modules()] == names_before
    fp8_bytes = sum(b.weight.numel() * b.weight.element_size() for b in bases)
    scale_bytes = sum(getattr(b, SCALE_NAME).numel() * 4 for b in bases)
    assert fp8_bytes * 2 == bf16_bytes
    assert scale_bytes == 4 * sum(b.out_features for b in bases)  # one fp32 per output channel: 4/in of the fp8 bytes
    assert all(b.weight.dtype == FP8_DTYPE and not b.weight.requires_grad for b in bases)
    assert not any(SCALE_NAME in k for k in model.state_dict())  # the scale is training state, not a weight
    after = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert after.keys() == lora_before.keys() and all(torch.equal(after[k], lora_before[k]) for k in after)
    assert convert_lora_bases_to_fp8(model) == len(bases)  # a second call finds them converted, changes nothing


def test_the_fused_path_over_fp8_bases_trains_like_the_bf16_one(tiny_model_dir):
    """Same loss to fp8's rounding, and every LoRA gradient close (they see fp8-rounded activations)."""
    ref_model = tiny_lora_model(tiny_model_dir)
    fp8_model = copy.deepcopy(ref_model)
    cfg = cfg_with()
    results = []
    for model, convert in ((ref_model, False), (fp8_model, True)):
        path = FusedPath(resolve_engine_settings(cfg, torch.device("cpu")))
        model = path.prepare(model)
        if convert:
            assert convert_lora_bases_to_fp8(model) == 14
        model.train()
        loss_sum, n = path.loss_sum(model, batch_for(model))
        (loss_sum / n).backward()
        results.append((float(loss_sum.detach() / n), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}))
    (ref_loss, ref_grads), (fp8_loss, fp8_grads) = results
    assert abs(fp8_loss - ref_loss) <= 5e-3 * ref_loss
    assert fp8_grads.keys() == ref_grads.keys()
    for k in ref_grads:
        assert rel(fp8_grads[k], ref_grads[k]) <= 0.15, k  # measured 0.05 on average, 0.065 at most


def test_peft_s_own_forward_over_fp8_bases_is_right_under_autocast(tiny_model_dir):
    """Adapters disabled: peft calls the base nn.Linear itself. Its plain forward under autocast
    would cast the raw e4m3 codes to bf16 without their scale; the converted one must not."""
    model = tiny_lora_model(tiny_model_dir)
    ids = batch_for(model)["input_ids"]
    with torch.no_grad(), model.disable_adapter():
        want = model(input_ids=ids).logits
    convert_lora_bases_to_fp8(model)
    with torch.no_grad(), model.disable_adapter(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(input_ids=ids).logits
    assert rel(got.float(), want) <= 0.05


def test_prepare_fp8_does_nothing_unless_asked_and_refuses_a_cpu(tiny_model_dir):
    model = tiny_lora_model(tiny_model_dir)
    assert prepare_fp8(model, EngineSettings(torch.device("cpu"), precision="bf16")) == 0
    assert all(b.weight.dtype == torch.float32 for b in base_layers(model))
    with pytest.raises(ConfigError, match=r"training\.precision=fp8"):
        prepare_fp8(model, EngineSettings(torch.device("cpu"), precision="fp8"))


def test_layers_whose_features_are_not_multiples_of_16_stay_as_they_are():
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 48), torch.nn.Linear(48, 32))
    model = get_peft_model(net, LoraConfig(r=2, target_modules=["0", "1", "2"]))
    assert convert_lora_bases_to_fp8(model) == 1  # only 48 → 32; `torch._scaled_mm` needs multiples of 16
    assert [b.weight.dtype for b in base_layers(model)] == [torch.float32, torch.float32, FP8_DTYPE]


def test_the_adapter_saves_without_the_fp8_bases_and_merging_into_them_is_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model = tiny_lora_model(tiny_model_dir, torch.bfloat16)
    convert_lora_bases_to_fp8(model)
    model.save_pretrained(str(tmp_path / "adapter"), safe_serialization=True)
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved) and all(v.dtype != FP8_DTYPE for v in saved.values())
    with pytest.raises(ModelError, match=r"training\.precision=fp8.*Load the base model in bf16"):
        model.merge_and_unload()
