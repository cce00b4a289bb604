"""Helpers for end-to-end runs on tiny models."""

from __future__ import annotations

import json

import pytest

from honed.config import config_from_dict

QA = [
    ("What does HbA1c measure?", "Average blood glucose over about three months."),
    ("What is TSH?", "Thyroid-stimulating hormone, made by the pituitary."),
    ("Do I need to fast for a lipid panel?", "Often 9 to 12 hours; ask your lab."),
    ("What is ALT?", "A liver enzyme; high levels can mean liver injury."),
    ("Who won the World Cup?", "I can only help with clinical laboratory questions."),
    ("血常规查什么？", "红细胞、白细胞和血小板等。"),
    ("What is a normal fasting glucose?", "About 70 to 99 mg/dL in adults."),
    ("What does CRP show?", "Inflammation somewhere in the body."),
]


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, ensure_ascii=False) + "\n" for q, a in QA))
    return path


@pytest.fixture
def make_config(tmp_path, qa_file, tiny_model_dir):
    """Build a TrainConfig for a tiny run; keyword sections are merged over small defaults."""

    def make(family="qwen2", **sections):
        raw = {
            "model": {"name_or_path": str(tiny_model_dir(family))},
            "data": {"train": [str(qa_file)], "system_prompt": "You answer lab questions.", "max_seq_length": 96},
            "lora": {"r": 8, "alpha": 16},
            "training": {"output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 2, "learning_rate": 5e-3, "seed": 3, "tensorboard": False},
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                raw[key] = {**raw.get(key, {}), **value}
            else:
                raw[key] = value
        return config_from_dict(raw)

    return make
