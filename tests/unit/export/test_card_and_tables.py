"""Model cards from a run's record; the GGUF family/quant tables and their refusals; rope factors."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from honed.model.card import write_card, write_run_cards
from honed.export.errors import ExportError
from honed.export.gguf import llama3_rope_factors
from honed.export.gguf_families import check_quant, gguf_family
from honed.export.gguf_vocab import pre_tokenizer_name


@pytest.fixture
def run(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"messages": []}\n{"messages": []}\n')
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    ckpt = run / "checkpoints" / "checkpoint-000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    for folder in (run, run / "best", ckpt):
        (folder / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "method": "qlora", "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "lora": {"r": 16, "alpha": 32}, "training": {"learning_rate": 2e-4, "epochs": 3},
        "data": {"train": [{"path": str(data)}], "system_prompt": "Only lab questions.\nBe brief."}}))
    (run / "run_info.json").write_text(json.dumps({"data_fingerprint": "abc", "model": {"model_type": "qwen2"},
                                                   "data": {"loaded": {str(data): 2}, "n_train": 2, "n_validation": 0,
                                                            "skipped": [{"where": "x", "reason": "y"}]}}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 2, "loss": 2.5}, {"kind": "eval", "step": 2, "loss": 2.0},
        {"kind": "train", "step": 4, "loss": 1.25}, {"kind": "eval", "step": 4, "loss": 2.25}]) + "\n")
    report = tmp_path / "eval-report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({
        "schema": "honed.eval.report", "evaluated": "tuned", "baseline": "base",
        "metric_labels": {"rougeL": {"label": "ROUGE-L"}},
        "models": [{"name": "tuned", "adapter": str(run), "summary": {"rougeL": 0.5}},
                   {"name": "base", "model_path": "Qwen/Qwen2.5-0.5B-Instruct", "summary": {"rougeL": 0.25}}]}))
    return run, data


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_run_cards_everywhere_with_the_runs_facts(run):
    run, data = run
    written = write_run_cards(run)
    assert sorted(p.parent.name for p in written) == ["best", "checkpoint-000004", "run"]
    text = (run / "README.md").read_text()
    meta = _front_matter(text)
    assert meta == {"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "library_name": "peft",
                    "pipeline_tag": "text-generation", "tags": ["honed", "qlora", "qwen2"]}
    assert f"| train | {data} | 2 | {hashlib.sha256(data.read_bytes()).hexdigest()} |" in text
    assert "> Only lab questions.\n> Be brief." in text
    assert "| final train loss | 1.25 |" in text and "| best validation loss | 2.0 |" in text
    assert "| best step | 2 |" in text and "1 skipped" in text
    assert "- **tuned**: ROUGE-L 0.5" in text and "- **base**: ROUGE-L 0.25" in text
    assert "A training checkpoint (step 4)" in (run / "checkpoints" / "checkpoint-000004" / "README.md").read_text()


def test_export_card_without_a_run(tmp_path):
    write_card(tmp_path, None, title="lab-q4", kind="export", format="gguf", quant="q4_k_m", base_model="org/base")
    meta = _front_matter((tmp_path / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["tags"] == ["honed", "gguf"]
    assert "An export (gguf q4_k_m) made with honed from **org/base**." in (tmp_path / "README.md").read_text()


def test_refusals_name_the_choices():
    assert check_quant("Q6_K") == "q6_k"
    with pytest.raises(ExportError, match="--quant q3_k_s: not a supported GGUF type; choose one of f16, bf16"):
        check_quant("q3_k_s")
    with pytest.raises(ExportError, match="does not support model_type 'gpt2'"):
        gguf_family("gpt2")
    assert gguf_family("mistral").gguf.arch == "llama" and gguf_family("mistral").gguf.permute_qk
    with pytest.raises(ExportError, match="no llama.cpp equivalent"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\w+|\s+"}}]}})


def test_llama3_rope_factors_match_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=scaling)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    ours = llama3_rope_factors({"rope_parameters": scaling}, 128)
    assert ours[0] == 1.0 and ours[-1] == 8.0
    assert torch.allclose(torch.from_numpy(ours).double(), plain / scaled.double(), rtol=1e-5)


def test_gguf_facts_come_from_the_one_family_table():
    """Each model_type's llama.cpp architecture, Q/K reordering, Gemma norm, end-of-turn token and Ollama
    stops, as the families table declares them (pinned: a wrong one breaks llama.cpp loading or stopping)."""
    facts = {t: (f.gguf.arch, f.gguf.permute_qk, f.gguf.norm_plus_one, f.end_of_turn[0], f.gguf.ollama_stops)
             for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3")
             for f in [gguf_family(t)]}
    assert facts == {
        "llama": ("llama", True, False, "<|eot_id|>", ("<|eot_id|>", "<|end_of_text|>")),
        "mistral": ("llama", True, False, "</s>", ("</s>", "[INST]")),
        "qwen2": ("qwen2", False, False, "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
        "qwen3": ("qwen3", False, False, "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
        "gemma2": ("gemma2", False, True, "<end_of_turn>", ("<end_of_turn>",)),
        "gemma3": ("gemma3", False, True, "<end_of_turn>", ("<end_of_turn>",)),
        "gemma3_text": ("gemma3", False, True, "<end_of_turn>", ("<end_of_turn>",)),
        "phi3": ("phi3", False, False, "<|end|>", ("<|end|>", "<|endoftext|>")),
    }
