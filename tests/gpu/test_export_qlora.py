"""QLoRA export on a CUDA GPU: the adapter is merged into the dequantised NF4 base it was trained
against, so the exported model reproduces base(NF4) + adapter; merging into the original 16-bit
base (`qlora_base="original"`) gives other weights. Run with `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honed.config import config_from_dict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY_BASE = Path(__file__).resolve().parents[2] / "src" / "honed" / "resources" / "tiny_base"


def test_qlora_run_exports_merged_into_the_dequantised_base(tmp_path):
    from safetensors.torch import load_file

    from honed.export.pipeline import export_model
    from honed.train.sft import train

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "What is TSH?"},
                                             {"role": "assistant", "content": "A pituitary hormone."}]}) + "\n")
    cfg = config_from_dict({"model": {"name_or_path": str(TINY_BASE)}, "method": "qlora",
                            "data": {"train": [str(data)], "system_prompt": "Lab questions only."},
                            "lora": {"r": 8, "alpha": 16},
                            "training": {"output_dir": str(tmp_path / "run"), "epochs": 3, "batch_size": 1,
                                         "learning_rate": 1e-3, "tensorboard": False}})
    train(cfg, show_progress=False)
    exact = export_model(str(tmp_path / "run"), fmt="hf", out=tmp_path / "exact")
    assert exact.passed  # greedy tokens of base(NF4 dequantised) + adapter, unmerged, reproduced
    original = export_model(str(tmp_path / "run"), fmt="hf", out=tmp_path / "original", qlora_base="original",
                            verify=False)
    a, b = load_file(str(exact.out_dir / "model.safetensors")), load_file(str(original.out_dir / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[name], b[name])  # NF4 rounding of the base is in the exact export
