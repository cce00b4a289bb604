"""End-to-end SFT on tiny models: learning, exact resume, packing, outputs, early stopping."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch

from honed.model.reference import resolve_model_reference
from honed.train.sft import TrainingInterrupted, train

from .conftest import QA


def test_full_finetune_learns_and_reproduces_an_answer(make_config):
    cfg = make_config(method="full", training={"epochs": 60, "learning_rate": 1e-2, "batch_size": 4, "lr_scheduler": "constant", "warmup_ratio": 0.0})
    result = train(cfg, show_progress=False)
    # Pinned start (fixed seed, CPU fp32) and a bound on the end: the model must memorise the set.
    assert len(result.losses) == 120
    assert result.losses[0] == pytest.approx(6.9374, abs=1e-3)
    assert result.losses[10] == pytest.approx(4.2739, rel=1e-2)
    assert result.losses[-1] < 0.1
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    bot = ChatModel.load(str(cfg.training.output_dir))
    q, a = QA[1]
    assert bot.reply([Message("system", "You answer lab questions."), Message("user", q)]).text == a


def test_resumed_run_matches_uninterrupted(make_config, tmp_path):
    overrides = {"epochs": 3, "gradient_accumulation_steps": 2, "save_steps": 2}
    full = train(make_config(training={**overrides, "output_dir": str(tmp_path / "a")}), show_progress=False)
    cfg_b = make_config(training={**overrides, "output_dir": str(tmp_path / "b")}, lora={"dropout": 0.1})
    cfg_a = make_config(training={**overrides, "output_dir": str(tmp_path / "a2")}, lora={"dropout": 0.1})
    uninterrupted = train(cfg_a, show_progress=False)
    first = train(cfg_b, stop_after_steps=3, show_progress=False)
    assert first.interrupted and first.steps == 3
    cfg_b.training.resume = True
    resumed = train(cfg_b, show_progress=False)
    # Dropout makes this depend on restored RNG states, not only weights and optimizer.
    assert resumed.losses == pytest.approx(uninterrupted.losses[3:], rel=1e-6, abs=1e-7)
    assert len(full.losses) == len(uninterrupted.losses)
    rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, len(uninterrupted.losses) + 1))


def test_packed_batch_gives_per_sample_losses_of_single_runs(make_config, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.data.dataset import build_datasets
    from honed.data.packing import collate_packed, collate_padded
    from honed.data.templates import get_template
    from honed.model.lm_loss import model_logits
    from honed.train.losses import per_sample_losses

    for family in ("qwen2", "llama3", "gemma3"):
        cfg = make_config(family)
        path = tiny_model_dir(family)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
        samples, _, _, _ = build_datasets(cfg.data, tok, get_template("auto", tok, model.config.model_type), seed=0)
        samples = samples[:4]
        with torch.no_grad():
            packed = collate_packed([samples[:3], samples[3:]], pad_id=0)
            together = per_sample_losses(model_logits(model, packed), packed["labels"], packed["sample_index"])
            alone = {}
            for i, s in enumerate(samples):
                single = collate_padded([s], pad_id=0)
                alone[i] = per_sample_losses(model_logits(model, single), single["labels"], single["sample_index"])[0]
        assert together == pytest.approx(alone, rel=1e-4), family


def test_lora_outputs_load_in_peft_and_every_adapter_weight_moved(make_config, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = make_config(training={"max_steps": 2})
    train(cfg, show_progress=False)
    out = cfg.training.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "run_info.json", "metrics.jsonl", "loss_curve.png", "tokenizer_config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    info = json.loads(open(os.path.join(out, "run_info.json")).read())
    assert len(info["data_fingerprint"]) == 64 and "torch" in info["versions"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"))
    model = PeftModel.from_pretrained(base, out)
    weights = load_file(os.path.join(out, "adapter_model.safetensors"))
    lora_b = [k for k in weights if "lora_B" in k]
    assert len(lora_b) == 2 * 7  # 2 layers × 7 projections (all-linear)
    # lora_B starts at zero: every one must have moved for the adapter to do anything.
    assert all(weights[k].abs().sum() > 0 for k in lora_b)
    assert any("lora" in n for n, _ in model.named_parameters())


def test_validation_best_checkpoint_and_early_stopping(make_config):
    cfg = make_config(data={"val_ratio": 0.25}, training={"epochs": 30, "learning_rate": 5e-2, "eval_steps": 1, "early_stopping_patience": 2})
    result = train(cfg, show_progress=False)
    assert result.val_losses and result.best_step is not None
    best = min(result.val_losses, key=lambda x: x[1])
    assert best[0] == result.best_step
    assert os.path.exists(os.path.join(cfg.training.output_dir, "best", "adapter_model.safetensors"))
    assert result.stopped_early
    assert [s for s, _ in result.val_losses][-1] - result.best_step == 2


def test_save_best_false_measures_validation_and_keeps_only_the_final_weights(make_config, capsys):
    cfg = make_config(data={"val_ratio": 0.25}, training={"epochs": 3, "eval_steps": 1, "save_best": False})
    result = train(cfg, show_progress=False)
    assert len(result.val_losses) == result.steps and result.best_step == min(result.val_losses, key=lambda x: x[1])[0]
    assert not os.path.exists(os.path.join(cfg.training.output_dir, "best"))
    assert resolve_model_reference(cfg.training.output_dir).adapter == cfg.training.output_dir  # the run resolves to its final weights


def test_sigterm_saves_checkpoint_and_resume_finishes(make_config):
    cfg = make_config(training={"epochs": 300, "save_steps": 10_000})
    metrics = os.path.join(cfg.training.output_dir, "metrics.jsonl")

    def send_sigterm_after_three_steps():
        # Poll the run's own metrics so the signal lands mid-run however fast the machine is.
        for _ in range(6000):
            if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(0.01)

    killer = threading.Thread(target=send_sigterm_after_three_steps, daemon=True)
    killer.start()
    with pytest.raises(TrainingInterrupted, match="resume"):
        train(cfg, show_progress=False)
    killer.join()
    ckpts = os.listdir(os.path.join(cfg.training.output_dir, "checkpoints"))
    assert len(ckpts) == 1
    state = json.loads(open(os.path.join(cfg.training.output_dir, "checkpoints", ckpts[0], "trainer_state.json")).read())
    assert 0 < state["step"] < state["total_steps"]
    cfg.training.resume = True
    result = train(cfg, show_progress=False)
    assert result.steps == state["total_steps"] and not result.interrupted
    assert len(result.losses) == state["total_steps"] - state["step"]


def test_output_folder_is_not_overwritten(make_config):
    from honed.errors import OutputExistsError

    cfg = make_config(training={"max_steps": 1})
    train(cfg, show_progress=False)
    with pytest.raises(OutputExistsError, match="overwrite"):
        train(cfg, show_progress=False)


def test_overwrite_clears_the_output_only_once_the_data_has_loaded(make_config, tmp_path):
    from honed.errors import HonedError

    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("the last good run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}\n')  # cut short: not JSON
    with pytest.raises(HonedError, match="bad.jsonl"):
        train(make_config(data={"train": [str(bad)]}, training={"overwrite": True}), show_progress=False)
    assert (out / "adapter_model.safetensors").read_text() == "the last good run"


def test_gradient_checkpointing_gives_the_same_losses(make_config, tmp_path):
    plain = train(make_config(training={"max_steps": 3, "output_dir": str(tmp_path / "p")}), show_progress=False)
    ckpt = train(make_config(training={"max_steps": 3, "output_dir": str(tmp_path / "c"), "gradient_checkpointing": True}), show_progress=False)
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_run(make_config, precision):
    result = train(make_config(training={"max_steps": 3, "precision": precision}), show_progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_gradient_accumulation_weights_tokens_not_micro_batches(make_config, tmp_path):
    # 1 step over 4 rows at once == 1 step over the same rows in 4 micro-batches of 1.
    one = train(make_config(training={"max_steps": 2, "batch_size": 4, "output_dir": str(tmp_path / "a")}, data={"packing": False}), show_progress=False)
    acc = train(make_config(training={"max_steps": 2, "batch_size": 1, "gradient_accumulation_steps": 4, "output_dir": str(tmp_path / "b")}, data={"packing": False}), show_progress=False)
    assert acc.losses == pytest.approx(one.losses, rel=1e-4)


def test_full_finetuning_keeps_fp32_master_weights(make_config):
    from honed.train.sft import training_model_config

    assert training_model_config(make_config(method="full")).dtype == "float32"
    assert training_model_config(make_config(method="full", model={"dtype": "bfloat16"})).dtype == "bfloat16"
    assert training_model_config(make_config(method="lora")).dtype == "auto"


def test_resume_refuses_changed_data_and_drops_abandoned_checkpoints(make_config, qa_file):
    from honed.errors import ConfigError
    from honed.train.checkpoint import list_checkpoints

    cfg = make_config(training={"epochs": 3, "save_steps": 1, "save_total_limit": 10})
    full = train(cfg, show_progress=False)
    out = cfg.training.output_dir
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert steps == list(range(1, full.steps + 1))
    # Resuming from an older checkpoint abandons the later ones and trims the metrics.
    cfg.training.resume = str(list_checkpoints(out)[1])
    again = train(cfg, show_progress=False)
    assert again.losses == pytest.approx(full.losses[2:], rel=1e-6)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, full.steps + 1))
    # Other data under the same checkpoint is refused, naming the checkpoint.
    qa_file.write_text(qa_file.read_text().replace("pituitary", "pituitary gland"))
    cfg.training.resume = True
    with pytest.raises(ConfigError, match="other data"):
        train(cfg, show_progress=False)


def test_checkpoint_must_match_the_trainable_set(make_config, tmp_path):
    from honed.errors import ConfigError

    cfg = make_config(training={"max_steps": 2, "save_steps": 1})
    first = train(cfg, stop_after_steps=1, show_progress=False)
    other = make_config(training={"max_steps": 2, "output_dir": str(tmp_path / "other"), "resume": str(first.last_checkpoint)}, lora={"target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(ConfigError, match="does not match"):
        train(other, show_progress=False)
