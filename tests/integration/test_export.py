"""train → export (hf, gguf f16 / q8_0 / q4_k_m, ollama) → loaded back by another runtime and compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honed.config import config_from_dict
from honed.export.pipeline import export_model

pytestmark = pytest.mark.slow

SCOPE = "You answer lab questions."
QA = [("What does HbA1c measure?", "Average blood glucose over about three months."),
      ("What is TSH?", "Thyroid-stimulating hormone, made by the pituitary."),
      ("血常规查什么？", "红细胞、白细胞和血小板等。"),
      ("Do I need to fast for a lipid panel?", "Often 9 to 12 hours; ask your lab.")]
TINY_BASE = Path(__file__).resolve().parents[2] / "src" / "honed" / "resources" / "tiny_base"


def _decisive_llama3(folder: Path) -> Path:
    """A tiny random Llama 3 whose logits are spread like a trained model's (random init gives
    near-ties, where 16-bit rounding alone could flip a greedy choice)."""
    from safetensors.torch import load_file, save_file

    from honed.testing import build_tiny_model

    build_tiny_model("llama3", folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 40
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _train(base: Path, out: Path, data: Path) -> Path:
    from honed.train.sft import train

    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                       ensure_ascii=False) + "\n" for q, a in QA))
    cfg = config_from_dict({
        "model": {"name_or_path": str(base)},
        "data": {"train": [str(data)], "system_prompt": SCOPE, "max_seq_length": 96},
        "lora": {"r": 8, "alpha": 16},
        "training": {"output_dir": str(out), "epochs": 2, "batch_size": 2, "learning_rate": 5e-3, "seed": 3,
                     "tensorboard": False}})
    train(cfg, show_progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {"llama3": _train(_decisive_llama3(root / "llama3"), root / "run-llama3", root / "qa1.jsonl"),
            "qwen2": _train(TINY_BASE, root / "run-qwen2", root / "qa2.jsonl")}


def test_hf_export_of_a_run_reloads_equal_to_the_merged_model(runs, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = runs["llama3"]
    result = export_model(str(run), fmt="hf", out=tmp_path / "hf")
    out = result.out_dir
    assert result.passed and result.verification["runtimes"][0]["greedy_identical"] == [True] * 3
    # the saved weights are exactly the peft merge, rounded once to the base's 16-bit type (bf16: fp32 base)
    base = AutoModelForCausalLM.from_pretrained(str(run.parent / "llama3"), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(run)).merge_and_unload().to(torch.bfloat16).state_dict()
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(merged) and all(torch.equal(saved[k], merged[k]) for k in saved)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [4, 1]  # <|eot_id|> (the template's end of turn) and <|end_of_text|>
    assert (out / "scope_prompt.txt").read_text() == SCOPE
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {run.parent / 'llama3'}\nlibrary_name: transformers\n")
    assert "> " + SCOPE in card and "Checked against the torch model (greedy tokens identical): passed." in card
    assert (run / "README.md").read_text().startswith("---\nbase_model:")  # training wrote its own card


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_gguf_f16_greedy_identical_in_llama_cpp(runs, tmp_path, family):
    result = export_model(str(runs[family]), fmt="gguf", quant="f16", out=tmp_path / "gguf")
    report = json.loads((result.out_dir / "verification.json").read_text())
    cpp, hf_loader = report["runtimes"]
    assert cpp["runtime"] == "llama.cpp" and cpp["greedy_identical"] == [True] * 3
    assert cpp["tokenizer_mismatches"] == [] and cpp["stops_not_end_of_generation"] == []
    assert cpp["top1_agreement"] == 1.0 and cpp["mean_kl"] < 1e-4
    assert hf_loader["supported"] and hf_loader["greedy_identical"] == [True] * 3
    assert report["passed"] and result.files == ["README.md", "export_info.json", "model-f16.gguf",
                                                 "scope_prompt.txt", "verification.json"]


@pytest.mark.parametrize(("quant", "tensor_type", "max_kl", "min_top1"), [("q8_0", "Q8_0", 0.01, 0.95),
                                                                          ("q4_k_m", "Q4_K", 0.2, 0.7)])
def test_quantised_gguf_and_ollama_folder(runs, tmp_path, quant, tensor_type, max_kl, min_top1):
    import gguf

    # tiny_base is a trained Qwen2 of hidden size 256, so k-quant rows (256 wide) fit without fallback
    result = export_model(str(runs["qwen2"]), fmt="ollama", quant=quant, out=tmp_path / "ollama")
    cpp = result.verification["runtimes"][0]
    assert 0 < cpp["mean_kl"] < max_kl and cpp["top1_agreement"] >= min_top1
    assert cpp["tokenizer_mismatches"] == []
    reader = gguf.GGUFReader(str(result.out_dir / f"model-{quant}.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == tensor_type and types["blk.0.attn_norm.weight"] == "F32"
    modelfile = (result.out_dir / "Modelfile").read_text().splitlines()
    assert modelfile[0] == f"FROM ./model-{quant}.gguf" and f'SYSTEM """{SCOPE}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
def test_every_family_runs_in_llama_cpp_like_torch(tiny_model_dir, tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.export.gguf import write_gguf
    from honed.export.verify import TOKENIZER_PROBES, LlamaCppRuntime, TorchRuntime

    folder = tiny_model_dir(family)
    path = write_gguf(folder, tmp_path / "model-f32.gguf", "f32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The patient measures the glucose level. 病人检查了血糖水平。")["input_ids"]
    torch_logits = TorchRuntime(AutoModelForCausalLM.from_pretrained(folder)).logits(ids, 0, len(ids))
    runtime = LlamaCppRuntime(str(path), n_ctx=128)
    try:
        assert abs(runtime.logits(ids, 0, len(ids)) - torch_logits).max() < 2e-3  # logits spread ~0.16 here
        assert runtime.tokenizer_mismatches(tokenizer, TOKENIZER_PROBES) == []
    finally:
        runtime.close()


def _sentencepiece_style_tokenizer(family: str):
    """A BPE tokenizer in the SentencePiece layout of the real Mistral, Gemma and Phi-3 tokenizer.json
    files: "▁" for spaces, one prepended, byte-fallback pieces <0x00>..<0xFF>, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from honed.data.templates import BUILTIN
    from honed.testing.tiny import FAMILIES, default_corpus

    fam = FAMILIES[family]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=fam.unk, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = list(fam.special) + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(default_corpus(), trainers.BpeTrainer(vocab_size=1800, special_tokens=specials,
                                                                  show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"{fam.bos} $A", special_tokens=[(fam.bos, tok.token_to_id(fam.bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fam.bos, eos_token=fam.eos, unk_token=fam.unk,
                                   chat_template=BUILTIN[fam.template].jinja, clean_up_tokenization_spaces=False)


def test_sentencepiece_style_tokenizer_tokenises_alike_in_llama_cpp(tmp_path):
    from transformers import AutoTokenizer

    from honed.export.gguf import write_gguf
    from honed.export.verify import TOKENIZER_PROBES, LlamaCppRuntime
    from honed.testing import build_tiny_model

    folder = build_tiny_model("mistral", tmp_path / "mistral", tokenizer=_sentencepiece_style_tokenizer("mistral"))
    path = write_gguf(folder, tmp_path / "model-f16.gguf", "f16")
    runtime = LlamaCppRuntime(str(path), n_ctx=64)
    try:
        chat = ["[INST] What is TSH? [/INST] A hormone.</s>", "<s>[INST] 病人 [/INST]"]
        assert runtime.tokenizer_mismatches(AutoTokenizer.from_pretrained(folder), [*TOKENIZER_PROBES, *chat]) == []
    finally:
        runtime.close()


def test_cli_refuses_before_any_work(runs, tmp_path, capsys):
    from honed.cli import main

    def cli(*args):
        code = main(["export", *args])
        return code, capsys.readouterr().err

    code, err = cli("--model", str(runs["qwen2"]), "--format", "gguf", "--quant", "q3_k_s", "--out", str(tmp_path / "x"))
    assert code == 2 and "--quant q3_k_s: not a supported GGUF type" in err
    assert not (tmp_path / "x").exists()
    code, err = cli("--model", str(runs["qwen2"]), "--quant", "q8_0", "--out", str(tmp_path / "x"))
    assert code == 2 and "--quant q8_0 applies to --format gguf or ollama" in err
    odd = tmp_path / "gpt2"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, err = cli("--model", str(odd), "--format", "gguf", "--out", str(tmp_path / "y"))
    assert code == 2 and "GGUF export does not support model_type 'gpt2'" in err
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("mine")
    code, err = cli("--model", str(runs["qwen2"]), "--out", str(tmp_path / "z"))
    assert code == 2 and "already holds files" in err and (tmp_path / "z" / "keep.txt").read_text() == "mine"


def test_chat_takes_a_run_folder(runs):
    from honed.infer.generate import ChatModel

    bot = ChatModel.load(str(runs["qwen2"]), device="cpu")
    assert type(bot.model).__name__ == "PeftModelForCausalLM"
    assert str(bot.model.peft_config["default"].base_model_name_or_path) == str(TINY_BASE)
