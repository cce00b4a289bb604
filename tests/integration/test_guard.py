"""The gate end to end: the CLI contract, the bilingual default on the sample domain, the gate in
front of chat/generate (refused questions never load the LLM), and the scope prompt that travels
with a trained model."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from honed.cli import main
from honed.quickstart import resource_path

LAB = ["What does HbA1c measure?", "What is a normal TSH level?", "Do I need to fast for a lipid panel?", "What is ALT in a liver panel?",
       "What does a high CRP mean?", "What is a normal fasting glucose?", "Why is potassium high after hemolysis?", "What tube is used for a CBC?",
       "What does ferritin measure?", "What is the normal range for sodium?"]
OFF = ["How do I bake sourdough bread?", "Who won the football world cup?", "Write a poem about the sea."]


@pytest.fixture
def gate_dir(tmp_path):
    ins, ood = tmp_path / "in.txt", tmp_path / "ood.txt"
    ins.write_text("\n".join(LAB) + "\n")
    ood.write_text("\n".join(OFF) + "\n")
    assert main(["guard", "fit", "--in-domain", str(ins), "--out-of-domain", str(ood), "--out", str(tmp_path / "gate"), "--embedder", "char-ngram", "--target-tpr", "0.9"]) == 0
    return tmp_path / "gate"


def test_cli_fit_score_eval_drift(gate_dir, tmp_path, capsys):
    questions = tmp_path / "q.txt"
    questions.write_text("What is a normal TSH level?\nHow do I bake sourdough bread?\n")
    assert main(["guard", "score", "--guard", str(gate_dir), "--input", str(questions), "--output", str(tmp_path / "s.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(r["text"], r["in_domain"]) for r in rows] == [("What is a normal TSH level?", True), ("How do I bake sourdough bread?", False)]
    from honed.guard.gate import load_gate

    api = load_gate(gate_dir).check_many([r["text"] for r in rows])
    assert [r["score"] for r in rows] == [pytest.approx(d.score, abs=1e-6) for d in api]  # the CLI and the Python API agree
    capsys.readouterr()
    ood = tmp_path / "ood2.txt"
    ood.write_text("How do I bake rye bread?\nWho won the world cup in 2018?\n")
    assert main(["guard", "eval", "--guard", str(gate_dir), "--in-domain", str(questions), "--out-of-domain", str(ood), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("AUROC ") and "FPR@95%TPR" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["scores-in-domain.png", "scores-out-of-domain.png"]
    assert main(["guard", "drift", "--guard", str(gate_dir), "--queries", str(ood)]) == 0
    assert "PSI" in capsys.readouterr().out
    assert main(["guard", "score", "--guard", str(gate_dir), "--input", str(questions), "--embedder", "default"]) == 2
    assert "fitted with embedder 'char-ngram:4096', not 'default'" in capsys.readouterr().err


def test_cli_contrast_weight_reaches_the_gate(gate_dir, tmp_path):
    part = json.loads((gate_dir / "gate.json").read_text())["parts"]["all"]
    assert json.loads((gate_dir / "gate.json").read_text())["contrast"] == 1.0 and (part["ood_indexed"], part["ood"]) == (2, 1)
    ins, ood = tmp_path / "in.txt", tmp_path / "ood.txt"  # the fixture's files
    for weight, indexed, held in (("0.5", 2, 1), ("0", 0, 3)):
        out = tmp_path / f"gate-{weight}"
        assert main(["guard", "fit", "--in-domain", str(ins), "--out-of-domain", str(ood), "--out", str(out), "--embedder", "char-ngram",
                     "--contrast", weight]) == 0
        cfg = json.loads((out / "gate.json").read_text())
        assert (cfg["contrast"], cfg["parts"]["all"]["ood_indexed"], cfg["parts"]["all"]["ood"]) == (float(weight), indexed, held)


def test_cli_empty_in_domain_file_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["guard", "fit", "--in-domain", str(empty), "--out", str(tmp_path / "gate"), "--embedder", "char-ngram"]) == 2
    assert "no questions found" in capsys.readouterr().err and not (tmp_path / "gate").exists()


def test_default_gate_separates_held_out_english_and_chinese_sample_questions(tmp_path):
    """The done-bar of the gate: AUROC >= 0.95 per language on questions it never saw (eval file)."""
    from sklearn.metrics import roc_auc_score

    from honed.guard.fit import fit_gate
    from honed.guard.gate import load_gate
    from honed.guard.questions import read_questions

    train, held = resource_path("sample_data", "clinical_lab_train.jsonl"), resource_path("sample_data", "clinical_lab_eval.jsonl")
    report = fit_gate(read_questions(train, "in_domain").texts, tmp_path / "gate")  # embedder auto
    assert [(p.route, p.embedder, p.indexed, p.held_out) for p in report.parts] == [("latin", "minilm", 112, 112), ("cjk", "zh-words:8192", 112, 112)]
    gate = load_gate(tmp_path / "gate")
    records = [json.loads(line) for line in held.read_text(encoding="utf-8").splitlines()]
    for lang in ("en", "zh"):
        rows = [r for r in records if r["lang"] == lang and r["kind"] in ("in_domain", "out_of_domain")]
        decisions = gate.check_many([r["messages"][0]["content"] for r in rows])
        labels = [r["kind"] == "in_domain" for r in rows]
        assert {d.route for d in decisions} == {"latin" if lang == "en" else "cjk"}
        assert roc_auc_score(labels, [d.score for d in decisions]) >= 0.95, lang


def test_gate_in_front_of_chat_and_generate(gate_dir, tmp_path, tiny_model_dir, capsys, monkeypatch):
    log = tmp_path / "queries.jsonl"
    # Refused: the model folder does not exist, so answering would fail; the refusal comes without it.
    assert main(["chat", "--model", str(tmp_path / "no-model"), "--guard", str(gate_dir), "--guard-log", str(log), "--prompt", "How do I bake sourdough bread?"]) == 0
    assert capsys.readouterr().out.strip() == "Sorry, that question is outside what I can help with. Please ask about this assistant's subject."
    assert main(["chat", "--model", str(tmp_path / "no-model"), "--guard", str(gate_dir), "--guard-log", str(log), "--prompt", "比特币还会涨吗？"]) == 0
    assert capsys.readouterr().out.strip().startswith("抱歉")
    answered = []
    from honed.infer.generate import ChatModel

    real_generate = ChatModel.generate
    monkeypatch.setattr(ChatModel, "generate", lambda self, convs, *a, **k: answered.extend(convs) or real_generate(self, convs, *a, **k))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ["What is a normal TSH level?", "Write a poem about the sea."]))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_model_dir("qwen2")), "--guard", str(gate_dir), "--guard-log", str(log),
                 "--input", str(prompts), "--output", str(out), "--max-new-tokens", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["gate"]["in_domain"] for r in rows] == [True, False] and rows[1]["new_tokens"] == 0
    assert rows[1]["response"].startswith("Sorry") and [c.messages[-1].content for c in answered] == ["What is a normal TSH level?"]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["source"], r["in_domain"]) for r in logged] == [("chat", False), ("chat", False), ("generate", True), ("generate", False)]
    assert all({"text", "score", "threshold", "route", "time"} <= set(r) for r in logged)
    assert main(["guard", "drift", "--guard", str(gate_dir), "--queries", str(log)]) == 0


def test_scope_prompt_travels_with_the_trained_adapter(make_config, tmp_path):
    from honed.commands.infer import system_prompt
    from honed.eval.config import EvalConfig
    from honed.eval.runner import data_with_model_scope
    from honed.infer.batch import generate_file
    from honed.train.sft import train

    cfg = make_config(training={"epochs": 1, "save_steps": 2})
    train(cfg, show_progress=False)
    out = Path(cfg.training.output_dir)
    assert (out / "scope_prompt.txt").read_text() == "You answer lab questions."
    checkpoints = sorted(out.glob("checkpoints/checkpoint-*"))
    assert len(checkpoints) == 2 and all((c / "scope_prompt.txt").read_text() == "You answer lab questions." for c in checkpoints)
    args = Namespace(system=None, no_scope_prompt=False, adapter=str(out), model=None)
    assert system_prompt(args) == "You answer lab questions."
    assert system_prompt(Namespace(**{**vars(args), "no_scope_prompt": True})) is None
    assert system_prompt(Namespace(**{**vars(args), "system": "Other."})) == "Other."

    class Recorder:
        def generate(self, convs, settings, batch_size):
            self.convs = convs
            return [type("R", (), {"text": "x", "finished": True, "new_tokens": 1, "reasoning": None})() for _ in convs]

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is TSH?"}) + "\n")
    bot = Recorder()
    generate_file(bot, prompts, tmp_path / "o.jsonl", None, system=system_prompt(args))
    assert [(m.role, m.content) for m in bot.convs[0].messages] == [("system", "You answer lab questions."), ("user", "What is TSH?")]
    eval_cfg = EvalConfig.model_validate({"models": [{"path": str(out)}], "data": {"path": str(prompts)}})
    assert data_with_model_scope(eval_cfg).system_prompt == "You answer lab questions."
    explicit = EvalConfig.model_validate({"models": [{"path": str(out)}], "data": {"path": str(prompts), "system_prompt": ""}})
    assert data_with_model_scope(explicit).system_prompt == ""


def test_interactive_chat_refuses_without_the_model(gate_dir, tmp_path, capsys, monkeypatch):
    lines = iter(["Write a poem about the sea.", "给我写一首关于月亮的诗。"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "--model", str(tmp_path / "no-model"), "--guard", str(gate_dir)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "bot> Sorry, that question is outside what I can help with. Please ask about this assistant's subject."
    assert shown[1].startswith("bot> 抱歉") and len(shown) == 2


def test_cli_exclude_topic_needs_general_questions_and_a_known_topic(tmp_path, capsys):
    ins = tmp_path / "in.txt"
    ins.write_text("What is TSH?\nWhat does HbA1c measure?\nNormal potassium range?\nWhat is INR?\n", encoding="utf-8")
    base = ["guard", "fit", "--in-domain", str(ins), "--embedder", "char-ngram"]
    assert main(base + ["--out", str(tmp_path / "a"), "--exclude-topic", "cooking"]) == 2
    assert "add --general-questions" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(base + ["--out", str(tmp_path / "b"), "--general-questions", "--exclude-topic", "baking"]) == 2
    assert "not a built-in topic; choose from" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(base + ["--out", str(tmp_path / "c"), "--general-questions"]) == 0
    # the 176 built-in questions, 35 held out for the report, 141 indexed as contrast
    assert json.loads((tmp_path / "c" / "gate.json").read_text())["parts"]["all"]["ood_indexed"] == 141
