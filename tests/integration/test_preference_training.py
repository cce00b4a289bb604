"""End-to-end preference training on a tiny model: DPO raises held-out preference accuracy, metrics
are logged, resume is exact, the reference cache serves full fine-tuning, and each objective trains."""

from __future__ import annotations

import json

import pytest

from honed.config import config_from_dict
from honed.train.sft import train

# Chosen and rejected answers differ in one word, so the untrained model's
# preference is about a coin flip; training on 16 pairs must make it prefer the chosen pattern on 4 held-out pairs.
TESTS = ["TSH", "ALT", "CRP", "HbA1c", "ferritin", "lipase", "troponin", "creatinine", "sodium", "potassium",
         "calcium", "albumin", "bilirubin", "ESR", "INR", "lactate", "urea", "glucose", "insulin", "cortisol"]


def _pair(test: str) -> dict:
    return {"prompt": f"What does {test} measure?", "chosen": f"{test} is measured in a urine sample.",
            "rejected": f"{test} is measured in a blood sample."}


@pytest.fixture
def pair_files(tmp_path):
    train_path, held_out = tmp_path / "pairs.jsonl", tmp_path / "held_out.jsonl"
    train_path.write_text("".join(json.dumps(_pair(t)) + "\n" for t in TESTS[:16]))
    held_out.write_text("".join(json.dumps(_pair(t)) + "\n" for t in TESTS[16:]))
    return train_path, held_out


def _cfg(tiny_model_dir, tmp_path, train_path, name="out", **sections):
    raw = {
        "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
        "data": {"train": [str(train_path)], "system_prompt": "You answer lab questions.", "max_seq_length": 64},
        "objective": "dpo",
        "preference": {"beta": 0.5},
        "lora": {"r": 8, "alpha": 16},
        "training": {"output_dir": str(tmp_path / name), "epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "seed": 3,
                     "tensorboard": False, "lr_scheduler": "constant", "warmup_ratio": 0.0},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(raw)


def _held_out_accuracy(model_dir, held_out):
    from honed.eval.preference import load_eval_pairs, preference_metrics
    from honed.infer.generate import ChatModel

    bot = ChatModel.load(str(model_dir), device="cpu")
    return preference_metrics(bot, load_eval_pairs(str(held_out), system_prompt="You answer lab questions."))


def test_dpo_raises_held_out_preference_accuracy_and_logs_rewards(tiny_model_dir, tmp_path, pair_files):
    train_path, held_out = pair_files
    before = _held_out_accuracy(tiny_model_dir("qwen2"), held_out)
    result = train(_cfg(tiny_model_dir, tmp_path, train_path), show_progress=False)
    after = _held_out_accuracy(result.output_dir, held_out)
    assert before["accuracy"] == 0.0 and after["accuracy"] == 1.0
    assert before["mean_margin"] == pytest.approx(-0.142, abs=0.01) and after["mean_margin"] > 4
    # Pinned first step: the adapter starts at zero, so policy = reference and the loss is log 2.
    assert result.losses[0] == pytest.approx(0.693147, abs=1e-5)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-6) and train_rows[0]["pairs"] == 4
    assert train_rows[-1]["rewards/accuracy"] == 1.0 and train_rows[-1]["rewards/margin"] > 1.0
    assert train_rows[-1]["rewards/chosen"] - train_rows[-1]["rewards/rejected"] == pytest.approx(train_rows[-1]["rewards/margin"], abs=1e-5)


def test_resumed_dpo_run_matches_uninterrupted(tiny_model_dir, tmp_path, pair_files):
    train_path, _ = pair_files
    settings = {"epochs": 2, "gradient_accumulation_steps": 2, "save_steps": 1}
    uninterrupted = train(_cfg(tiny_model_dir, tmp_path, train_path, "a", training=settings, lora={"dropout": 0.1}), show_progress=False)
    cfg = _cfg(tiny_model_dir, tmp_path, train_path, "b", training=settings, lora={"dropout": 0.1})
    first = train(cfg, stop_after_steps=2, show_progress=False)
    assert first.interrupted and first.steps == 2
    cfg.training.resume = True
    resumed = train(cfg, show_progress=False)
    assert resumed.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-6, abs=1e-7)


def test_full_finetune_uses_the_reference_cache_and_resumes_exactly(tiny_model_dir, tmp_path, pair_files):
    from honed.errors import ConfigError
    from honed.train.checkpoint import list_checkpoints
    from honed.train.objectives.reference import CACHE_FILE

    train_path, _ = pair_files
    settings = {"epochs": 2, "save_steps": 1, "learning_rate": 1e-3}
    uninterrupted = train(_cfg(tiny_model_dir, tmp_path, train_path, "a", method="full", training=settings), show_progress=False)
    assert (tmp_path / "a" / CACHE_FILE).is_file()
    assert uninterrupted.losses[0] == pytest.approx(0.693147, abs=1e-5)  # the cache is the starting model: Δ = 0 at step 1
    cfg = _cfg(tiny_model_dir, tmp_path, train_path, "b", method="full", training=settings)
    train(cfg, stop_after_steps=2, show_progress=False)
    cfg.training.resume = True
    resumed = train(cfg, show_progress=False)
    assert resumed.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-5, abs=1e-6)
    # Without the cache, a resumed full fine-tune cannot recompute it from moved weights.
    (tmp_path / "b" / CACHE_FILE).unlink()
    cfg.training.resume = str(list_checkpoints(tmp_path / "b")[0])
    with pytest.raises(ConfigError, match="reference_logps.safetensors is missing"):
        train(cfg, show_progress=False)
    with pytest.raises(ConfigError, match="adapter_off needs a LoRA"):
        train(_cfg(tiny_model_dir, tmp_path, train_path, "c", method="full", preference={"reference": "adapter_off"}), show_progress=False)


@pytest.mark.parametrize("objective,preference", [("orpo", {"beta": 0.5}), ("simpo", {"beta": 2.0, "simpo_gamma": 0.5}),
                                                  ("dpo", {"loss_type": "ipo", "rpo_alpha": 1.0})])
def test_other_objectives_train_and_prefer_the_chosen_answer(tiny_model_dir, tmp_path, pair_files, objective, preference):
    train_path, held_out = pair_files
    result = train(_cfg(tiny_model_dir, tmp_path, train_path, objective=objective, preference=preference, training={"epochs": 4}),
                   show_progress=False)
    assert result.losses[-1] < result.losses[0]
    assert _held_out_accuracy(result.output_dir, held_out)["accuracy"] == 1.0


def test_kto_trains_on_unpaired_samples(tiny_model_dir, tmp_path, pair_files):
    _, held_out = pair_files
    kto_path = tmp_path / "kto.jsonl"
    rows = []
    for t in TESTS[:16]:
        p = _pair(t)
        rows += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True}, {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
    kto_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(_cfg(tiny_model_dir, tmp_path, kto_path, objective="kto", training={"epochs": 4, "batch_size": 8}), show_progress=False)
    assert result.losses[0] == pytest.approx(0.5, abs=1e-5)  # policy = reference: 1 - σ(0) for every sample
    assert result.losses[-1] < 0.45
    assert _held_out_accuracy(result.output_dir, held_out)["accuracy"] == 1.0
    last = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line][-1]
    assert last["rewards/chosen"] > last["rewards/rejected"]


def test_cli_trains_dpo_and_eval_reports_preference(tiny_model_dir, tmp_path, pair_files, capsys):
    import yaml

    from honed.cli import main

    train_path, held_out = pair_files
    cfg = _cfg(tiny_model_dir, tmp_path, train_path, "cli", training={"max_steps": 2})
    config_file = tmp_path / "dpo.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(config_file), "--no-progress"]) == 0
    out = tmp_path / "cli"
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    # A pairs file under objective kto is an error naming the line, not a traceback.
    assert main(["train", str(config_file), "objective=kto", f"training.output_dir={tmp_path / 'kto'}", "--no-progress"]) == 2
    assert f"{train_path}:1: this objective trains on prompt/completion/label records" in capsys.readouterr().err
    eval_data = tmp_path / "eval.jsonl"
    eval_data.write_text(json.dumps({"prompt": "What does TSH measure?", "reference": "A hormone."}) + "\n")
    assert main(["eval", "--model", str(out), "--baseline", "base", "--data", str(eval_data), "--preference", str(held_out),
                 "--max-new-tokens", "4", "--output", str(tmp_path / "report"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["models"][1]["metrics"]["preference"]["accuracy"] == 0.0  # the base, as measured before training above
    assert report["models"][0]["metrics"]["preference"]["n_pairs"] == 4
    assert "preference_accuracy" in report["deltas"]["cli"]


def test_stages_switch_objective_sft_then_dpo_from_the_sft_weights(tiny_model_dir, tmp_path, pair_files, qa_file):
    """Stage 1 SFT on answers, stage 2 DPO on pairs from stage 1's adapter (its reference: stage 1's model)."""
    from safetensors.torch import load_file

    from honed.train.objectives.reference import CACHE_FILE
    from honed.train.stages import run_stages, stage_configs

    train_path, held_out = pair_files
    cfg = _cfg(tiny_model_dir, tmp_path, qa_file, "staged", objective="sft",
               data={"validation": [str(qa_file)]},  # SFT records: must not reach the DPO stage
               training={"epochs": 1, "learning_rate": 5e-3},
               stages=[{"name": "sft", "training": {"max_steps": 3}},
                       {"name": "dpo", "objective": "dpo", "data": {"train": [str(train_path)], "val_ratio": 0.25},
                        "preference": {"beta": 0.5}, "training": {"epochs": 4, "learning_rate": 1e-2}}])
    (_, sft_cfg), (_, dpo_cfg) = stage_configs(cfg)
    assert (sft_cfg.objective, dpo_cfg.objective) == ("sft", "dpo") and len(sft_cfg.data.validation) == 1 and dpo_cfg.data.validation == []
    sft_result, dpo_result = run_stages(cfg, show_progress=False)
    first, second = tmp_path / "staged" / "stage-1-sft", tmp_path / "staged" / "stage-2-dpo"
    info = [json.loads((d / "run_info.json").read_text()) for d in (first, second)]
    assert [i["model"]["objective"] for i in info] == ["sft", "dpo"] and sft_result.steps == 3 and dpo_result.steps == 12  # 4 epochs of 12 pairs (4 held out)
    # Stage 2 continued stage 1's adapter, which (trained) is also its reference: policy = reference at step 1.
    assert (second / CACHE_FILE).is_file() and dpo_result.losses[0] == pytest.approx(0.693147, abs=1e-5)
    assert any(v.abs().sum() > 0 for k, v in load_file(str(first / "adapter_model.safetensors")).items() if "lora_B" in k)
    before, after = _held_out_accuracy(first, held_out), _held_out_accuracy(second, held_out)
    assert before["accuracy"] < 1.0 and after["accuracy"] == 1.0
    # Validation of the DPO stage logs its reward metrics beside the loss.
    evals = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and evals[-1]["rewards/accuracy"] == 1.0 and evals[-1]["pairs"] == 4
    assert evals[-1]["rewards/margin"] == pytest.approx(evals[-1]["rewards/chosen"] - evals[-1]["rewards/rejected"], abs=1e-6)
