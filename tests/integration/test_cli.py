"""The CLI verbs of the foundation, run in-process through honed.cli.main."""

from __future__ import annotations

import json

import pytest
import yaml

from honed.cli import main

from .conftest import QA


@pytest.fixture
def config_file(tmp_path, qa_file, tiny_model_dir):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
        "data": {"train": [qa_file.name], "system_prompt": "You answer lab questions.", "max_seq_length": 96},
        "method": "full",
        "training": {"output_dir": str(tmp_path / "out"), "epochs": 40, "batch_size": 4, "learning_rate": 1e-2, "lr_scheduler": "constant", "warmup_ratio": 0.0, "tensorboard": False},
    }))
    return path


def test_train_then_chat_and_generate(config_file, tmp_path, capsys):
    assert main(["train", str(config_file), "--no-progress"]) == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").exists() and (out / "config.yaml").exists()

    capsys.readouterr()
    assert main(["chat", "--model", str(out), "--system", "You answer lab questions.", "--prompt", QA[0][0]]) == 0
    assert capsys.readouterr().out.strip() == QA[0][1]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q, _ in QA[:3]) + json.dumps({"messages": [{"role": "user", "content": QA[3][0]}, {"role": "assistant", "content": QA[3][1]}]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    args = ["generate", "--model", str(out), "--system", "You answer lab questions.", "--input", str(prompts), "--output", str(answers), "--batch-size", "3"]
    assert main(args) == 0
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    # Batched, left-padded generation gives the same answers as one-by-one chat.
    assert [r["response"] for r in rows] == [a for _, a in QA[:4]]
    assert rows[3]["reference"] == QA[3][1] and all(r["finished"] for r in rows)
    assert main(args) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_sampling_is_seeded(config_file, tmp_path, capsys):
    cfg = yaml.safe_load(config_file.read_text())
    cfg["training"]["epochs"] = 1
    config_file.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config_file), "--no-progress"]) == 0
    runs = []
    for _ in range(2):
        capsys.readouterr()
        main(["chat", "--model", str(tmp_path / "out"), "--prompt", "hello", "--temperature", "1.0", "--seed", "7", "--max-new-tokens", "12"])
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and runs[0].strip()


def test_data_inspect_marks_trained_spans(config_file, capsys):
    assert main(["data", "inspect", str(config_file), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_train"] == len(QA) and stats["would_truncate"] == 0
    assert list(stats["formats"].values()) == ["openai"]
    assert main(["data", "inspect", str(config_file), "data.max_seq_length=20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["would_truncate"] == len(QA)
    assert main(["data", "inspect", str(config_file), "--sample", "1"]) == 0
    shown = capsys.readouterr().out
    # Piped output marks exactly the answer and its end-of-turn token as trained.
    assert f"⟦{QA[1][1]}<|im_end|>⟧" in shown and shown.count("⟦") == 2  # the span, and the legend


def test_bad_config_and_bad_data_are_clear_errors(config_file, tmp_path, qa_file, capsys):
    assert main(["train", str(config_file), "training.learning_rat=1"]) == 2
    assert "training.learning_rat" in capsys.readouterr().err
    good = qa_file.read_text()
    qa_file.write_text(good + '{"messages": [{"role": "user", "content": "q"}]}\n{"oops": 1}\n')
    assert main(["train", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "qa.jsonl:10: field 'messages'" in err and "on_bad_record" in err
    qa_file.write_text(good + '{"messages": [{"role": "user", "content": "q"}]}\n')
    assert main(["train", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "qa.jsonl:9: it has no assistant answer" in err


def test_skipped_records_are_counted(config_file, tmp_path, qa_file):
    qa_file.write_text(qa_file.read_text() + '{"oops": 1}\n{"messages": [{"role": "user", "content": "q"}]}\n')
    assert main(["train", str(config_file), "data.on_bad_record=skip", "training.epochs=1", "--no-progress"]) == 0
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    where = sorted(s["where"].rsplit(":", 1)[1] for s in info["data"]["skipped"])
    assert where == ["10", "9"] and info["data"]["n_train"] == len(QA)


def test_no_samples_left_lists_what_was_skipped_and_flags_go_anywhere(config_file, capsys):
    # Every prompt fills 16 tokens: nothing of any answer is left to learn; -v after the subcommand is accepted.
    assert main(["train", str(config_file), "data.on_bad_record=skip", "data.max_seq_length=16", "-v"]) == 2
    err = capsys.readouterr().err
    assert "no training samples left after tokenization; skipped:" in err
    assert "qa.jsonl:1: nothing is left to train on after truncating to max_seq_length=16" in err
    assert err.count("nothing is left to train on") == len(QA)
    from honed.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["data", "split", "a.jsonl", "-o", "out", "-v"]).verbose is True
    assert parser.parse_args(["-v", "data", "split", "a.jsonl", "-o", "out"]).verbose is True
    assert parser.parse_args(["data", "split", "a.jsonl", "-o", "out"]).verbose is False


def test_empty_data_file_is_an_error(config_file, qa_file, capsys):
    qa_file.write_text("\n")
    assert main(["train", str(config_file)]) == 2
    assert "no usable records" in capsys.readouterr().err


def test_seeded_generation_leaves_the_callers_rng_alone(tiny_model_dir):
    import torch

    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel, GenerationSettings

    bot = ChatModel.load(str(tiny_model_dir("qwen2")))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bot.reply([Message("user", "hi")], GenerationSettings(max_new_tokens=3, temperature=1.0, seed=5))
    assert torch.equal(torch.rand(3), expected)
