"""CUDA paths that CPU CI cannot run: QLoRA (NF4, double quant), pre-quantized checkpoints,
8-bit AdamW, bf16 LoRA and full fine-tuning. Run on the GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json

import pytest
import torch

from honed.config import config_from_dict
from honed.train.sft import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

QA = [
    ("What does HbA1c measure?", "Average blood glucose over about three months."),
    ("What is TSH?", "Thyroid-stimulating hormone, made by the pituitary."),
    ("What is ALT?", "A liver enzyme; high levels can mean liver injury."),
    ("Who won the World Cup?", "I can only help with clinical laboratory questions."),
]

# LoRA leaves the random tiny model's embeddings (tied lm_head, rows of norm ~0.32) and final norm
# frozen, so a target logit tops out near 16 * 0.32 = 5.1 and the loss cannot go much below ~2 nats.
# In 60 cosine-decayed steps LoRA only gets from 7.0 to ~5.2-5.8 (same on CPU fp32 as on the GPU);
# in 150 it reaches ~2.4, so the LoRA paths get 150 epochs to make "halves the loss" a fair bound.
# On a 4-bit (NF4) base LoRA learns slower still (150 epochs on an H200: QLoRA + 8-bit AdamW 7.0 -> 4.3,
# pre-quantized 7.0 -> 3.6), so those paths get 300.
LORA_EPOCHS = 150
QUANT_EPOCHS = 300


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from honed.testing import build_tiny_model

    # Real-shaped enough for bitsandbytes: every linear dimension a multiple of its 64-wide blocks.
    return build_tiny_model("qwen2", tmp_path_factory.mktemp("base"), hidden_size=256, layers=2)


@pytest.fixture
def qa_file(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    return p


def run(base, data, out, **training):
    method = training.pop("method", "lora")
    cfg = config_from_dict({
        "model": {"name_or_path": str(base)},
        "data": {"train": [str(data)], "max_seq_length": 128},
        "method": method,
        "lora": {"r": 16, "alpha": 32},
        "training": {"output_dir": str(out), "epochs": 60, "batch_size": 4, "learning_rate": 1e-2, "tensorboard": False, **training},
    })
    torch.cuda.reset_peak_memory_stats()
    result = train(cfg, show_progress=False)
    return result, torch.cuda.max_memory_allocated() / 2**30


def test_qlora_nf4_with_8bit_adamw_learns(base_dir, qa_file, tmp_path):
    result, gib = run(base_dir, qa_file, tmp_path / "q", method="qlora", optimizer="adamw_8bit", gradient_checkpointing=True, epochs=QUANT_EPOCHS)
    info = json.loads((tmp_path / "q" / "run_info.json").read_text())
    assert info["model"]["quantized"] and info["model"]["precision"] == "bf16"
    assert result.losses[-1] < 0.5 * result.losses[0]
    print(f"qlora: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, peak {gib:.3f} GiB")


def test_prequantized_checkpoint_loads_and_trains(base_dir, qa_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=q, device_map={"": 0})
    pre = tmp_path / "base-bnb-4bit"
    model.save_pretrained(pre)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(pre)
    result, _ = run(pre, qa_file, tmp_path / "p", method="lora", epochs=QUANT_EPOCHS)
    info = json.loads((tmp_path / "p" / "run_info.json").read_text())
    assert info["model"]["prequantized"]
    assert result.losses[-1] < 0.5 * result.losses[0]
    print(f"prequantized lora: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_training_learns(base_dir, qa_file, tmp_path, method):
    lr, epochs = (1e-2, LORA_EPOCHS) if method == "lora" else (2e-3, 60)
    result, gib = run(base_dir, qa_file, tmp_path / method, method=method, learning_rate=lr, epochs=epochs)
    assert result.losses[-1] < 0.5 * result.losses[0]
    print(f"{method}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, peak {gib:.3f} GiB")


def test_generation_on_gpu(base_dir, qa_file, tmp_path):
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    # Full fine-tuning memorises the set (LoRA on a random tiny base cannot: its loss floors near 2).
    run(base_dir, qa_file, tmp_path / "full", method="full", learning_rate=2e-3, epochs=60)
    bot = ChatModel.load(str(tmp_path / "full"))
    assert bot.device.type == "cuda"
    assert bot.reply([Message("user", QA[0][0])]).text == QA[0][1]
    # An adapter loads onto its base on the GPU, and greedy answers repeat exactly.
    run(base_dir, qa_file, tmp_path / "g", method="lora", epochs=5)
    bot = ChatModel.load(adapter=str(tmp_path / "g"))
    first = bot.reply([Message("user", QA[0][0])]).text
    assert bot.device.type == "cuda" and bot.reply([Message("user", QA[0][0])]).text == first
