"""`honed merge`: base <-> tuned interpolation, exact tensor by tensor, and the alpha sweep."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from honed.cli import main
from honed.errors import ConfigError, ModelError, OutputExistsError
from honed.export.alpha_sweep import SweepPoint, parse_alphas, recommend
from honed.export.interpolate import Interpolation, check_same_tensors, interpolate


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Qwen2 base, a LoRA adapter on it (random B, so the merge changes weights), a full
    'fine-tune' (the same architecture, other weights), and the plain peft merge as reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from honed.model.scope import save_scope_prompt
    from honed.testing import build_tiny_model
    from honed.testing.lora import lora_model

    root = tmp_path_factory.mktemp("merge")
    base = build_tiny_model("qwen2", root / "base")
    adapter = root / "adapter"
    lora_model(base).save_pretrained(adapter)
    save_scope_prompt(adapter, "Lab questions only.")
    full = build_tiny_model("qwen2", root / "full", seed=1)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload()
    reference = {k: v.detach().clone() for k, v in merged.state_dict().items()}
    return {"root": root, "base": base, "adapter": adapter, "full": full, "merged": reference}


def saved(folder):
    return load_file(str(folder / "model.safetensors"))


def test_lora_interpolation_is_exact_tensor_by_tensor(pair):
    base_w = saved(pair["base"])
    interp = Interpolation(pair["base"], pair["adapter"])
    outs = {a: interp.save(a, pair["root"] / f"lora-{a}") for a in (0.0, 0.5, 1.0)}
    at0, at_half, at1 = (saved(outs[a]) for a in (0.0, 0.5, 1.0))
    assert set(at0) == set(base_w)
    changed = 0
    for name, b in base_w.items():
        t = pair["merged"][name]
        assert torch.equal(at0[name], b), name                      # alpha 0: the base
        assert torch.equal(at1[name], t), name                      # alpha 1: the plain LoRA merge
        torch.testing.assert_close(at_half[name], (b + t) / 2, rtol=0, atol=1e-7)  # the midpoint
        changed += not torch.equal(b, t)
    assert changed >= 8  # the adapter touched the projections: the test compares real differences
    assert (outs[0.5] / "scope_prompt.txt").read_text() == "Lab questions only."
    assert json.loads((outs[0.5] / "merge_info.json").read_text())["alpha"] == 0.5
    assert (outs[0.5] / "tokenizer_config.json").is_file()


def test_full_model_interpolation_and_alpha_beyond_one(pair, tmp_path):
    base_w, full_w = saved(pair["base"]), saved(pair["full"])
    out = interpolate(pair["base"], pair["full"], 0.25, tmp_path / "q")
    quarter = saved(out)
    for name in base_w:
        torch.testing.assert_close(quarter[name], base_w[name] + 0.25 * (full_w[name] - base_w[name]), rtol=0, atol=1e-6)
    out = interpolate(pair["base"], pair["full"], 1.5, tmp_path / "x")
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(saved(out)[name], base_w[name] + 1.5 * (full_w[name] - base_w[name]), rtol=0, atol=1e-6)


def test_refuses_other_architectures_shapes_and_overwrites(pair, tmp_path):
    from honed.testing import build_tiny_model

    other = build_tiny_model("qwen2", tmp_path / "wide", hidden_size=96)
    with pytest.raises(ModelError, match="hidden_size is 96 in the tuned model and 64 in the base"):
        Interpolation(pair["base"], other)
    llama = build_tiny_model("llama3", tmp_path / "llama")
    with pytest.raises(ModelError, match="model_type is 'llama' in the tuned model and 'qwen2'"):
        Interpolation(pair["base"], llama)
    with pytest.raises(ModelError, match=r"tensor lm_head.weight has shape \(8, 4\) in the tuned model and \(9, 4\) in the base"):
        check_same_tensors({"lm_head.weight": torch.zeros(9, 4)}, {"lm_head.weight": torch.zeros(8, 4)}, "B", "T")
    with pytest.raises(ModelError, match="tensor extra.bias is missing from the base"):
        check_same_tensors({}, {"extra.bias": torch.zeros(1)}, "B", "T")
    out = tmp_path / "m"
    interpolate(pair["base"], pair["adapter"], 1.0, out)
    before = saved(out)["model.norm.weight"].clone()
    with pytest.raises(OutputExistsError, match="not empty"):
        interpolate(pair["base"], pair["full"], 1.0, out)
    assert torch.equal(saved(out)["model.norm.weight"], before)
    with pytest.raises(OutputExistsError, match="an input"):
        interpolate(pair["base"], pair["adapter"], 1.0, pair["adapter"], overwrite=True)


def test_cli_merge(pair, tmp_path, capsys):
    out = tmp_path / "half"
    assert main(["merge", "--base", str(pair["base"]), "--tuned", str(pair["adapter"]), "--alpha", "0.5", "--out", str(out)]) == 0
    assert "alpha=0.5" in capsys.readouterr().out
    assert json.loads((out / "merge_info.json").read_text())["tuned_kind"] == "lora"
    assert main(["merge", "--base", str(pair["base"]), "--tuned", str(pair["adapter"]), "--sweep", "0,1", "--out", str(tmp_path / "s")]) == 2
    assert "--sweep needs --eval" in capsys.readouterr().err


def test_recommendation_rule():
    points = [SweepPoint(0.0, 0.10, 0.30, 0.00, 0.90), SweepPoint(0.25, 0.30, 0.92, 0.02, 0.85),
              SweepPoint(0.5, 0.36, 0.95, 0.04, 0.80), SweepPoint(1.0, 0.40, 1.00, 0.10, 0.60)]
    # 0.25 meets refusal and false-refusal, but its ROUGE-L 0.30 < 0.9 * 0.40: 0.5 is the smallest that meets all.
    assert recommend(points).alpha == 0.5
    assert recommend(points, quality_share=0.7).alpha == 0.25
    rec = recommend(points, refusal_target=0.99, false_refusal_limit=0.01)
    # none qualifies; harmonic means of (quality, refusal, 1 - false refusal, general):
    # 0.0 → 4/15.444 = 0.259, 0.25 → 4/6.617 = 0.605, 0.5 → 4/6.122 = 0.653, 1.0 → 4/6.278 = 0.637
    assert rec.alpha == 0.5 and "best harmonic mean (0.653)" in rec.reason
    assert "smallest alpha with out-of-domain refusal >= 99%" in rec.rule


def test_parse_alphas():
    assert parse_alphas("1,0,0.25") == [0.0, 0.25, 1.0]
    for bad in ("0", "0,0", "a,b"):
        with pytest.raises(ConfigError, match="--sweep"):
            parse_alphas(bad)


def test_sweep_over_two_alphas(tmp_path, capsys):
    from honed.quickstart import tiny_model_path
    from honed.testing.lora import lora_model

    base, adapter = tiny_model_path(), tmp_path / "adapter"  # the shipped tiny base writes real words
    lora_model(base, b_std=0.02).save_pretrained(adapter)
    data = tmp_path / "eval.jsonl"
    rows = [("What does HbA1c measure?", "Average glucose.", "in_domain"), ("What is TSH?", "A hormone.", "in_domain"),
            ("Who won the cup?", "I can only help with lab tests.", "out_of_domain")]
    data.write_text("".join(json.dumps({"prompt": q, "reference": a, "kind": k}) + "\n" for q, a, k in rows))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("data: {path: eval.jsonl}\nloss: false\n"  # no models: the sweep gives them; data relative to the file
                   "generation: {max_new_tokens: 6, batch_size: 32}\ngeneral: {max_new_tokens: 3}\n")
    out = tmp_path / "sweep"
    assert main(["merge", "--base", str(base), "--tuned", str(adapter), "--sweep", "0,1",
                 "--eval", str(cfg), "--out", str(out), "--no-progress"]) == 0
    shown = capsys.readouterr().out
    assert "rule: the smallest alpha" in shown and "recommended: alpha=" in shown
    table = json.loads((out / "sweep.json").read_text())
    report = json.loads((out / "eval" / "report.json").read_text())
    metrics = {m["name"]: m["metrics"] for m in report["models"]}
    assert [p["alpha"] for p in table["points"]] == [0.0, 1.0]
    for p in table["points"]:
        m = metrics[f"alpha={p['alpha']:g}"]
        assert p["in_domain_quality"] == m["generation"]["rougeL"]
        assert p["false_refusal_rate"] == m["domain"]["false_refusal_rate"]
        assert p["ood_refusal_rate"] == m["domain"]["refusal_recall"]
        assert p["general_accuracy"] == m["general"]["accuracy"]
        assert p["in_domain_quality"] is not None and p["ood_refusal_rate"] is not None
    assert torch.equal(saved(out / "alpha-0")["model.norm.weight"], saved(base)["model.norm.weight"])  # bf16 kept
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
