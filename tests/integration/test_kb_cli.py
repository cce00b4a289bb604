"""`honed kb …`, `honed data add-context` and `honed chat/generate --kb`, run in-process through honed.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import honed
from honed.cli import main
from honed.testing.documents import write_sample_documents

SAMPLE_KB = Path(honed.__file__).parent / "resources" / "sample_data" / "kb"
TINY_BASE = Path(honed.__file__).parent / "resources" / "tiny_base"


@pytest.fixture
def built_kb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_sample_documents(tmp_path / "docs")
    assert main(["kb", "add", "docs", "--kb", "kb", "--embedder", "char-ngram", "--chunk-size", "200", "--overlap", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["added"]) == 4 and len(report["skipped"]) == 3
    return tmp_path / "kb"


def test_kb_verbs(built_kb, capsys):
    assert main(["kb", "search", "hemolysis potassium", "--kb", "kb", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["location"] for h in hits][0] == "Potassium > Hemolysis" and len(hits) == 2
    assert main(["kb", "list", "--kb", "kb", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert sorted(d["source"] for d in docs) == ["docs/cardiac.pdf", "docs/glucose.md", "docs/potassium.html", "docs/turnaround.txt"]
    assert {d["chunking"]["size"] for d in docs} == {200}
    assert main(["kb", "stats", "--kb", "kb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 8
    assert main(["kb", "add", "docs", "--kb", "kb", "--chunk-size", "200", "--overlap", "40", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["unchanged"]) == 4
    # Another embedder is refused with a message naming both.
    assert main(["kb", "search", "x", "--kb", "kb", "--embedder", "char-ngram:512"]) == 2
    assert "built with embedder 'char-ngram:4096'" in capsys.readouterr().err
    assert main(["kb", "search", "x", "--kb", "nowhere"]) == 2
    assert "no knowledge base here" in capsys.readouterr().err


def test_add_context_cli(built_kb, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"messages": [{"role": "user", "content": "Why is potassium falsely high after hemolysis?"},
                                           {"role": "assistant", "content": "Red cells release potassium."}]}) + "\n")
    args = ["data", "add-context", "--kb", "kb", "--in", str(qa), "--out", "rag.jsonl", "--distractors", "2", "--unanswerable-ratio", "0"]
    assert main(args) == 0
    assert "wrote 1 samples to rag.jsonl: 1 answerable" in capsys.readouterr().out
    row = json.loads((tmp_path / "rag.jsonl").read_text())
    assert len(row["rag"]["sources"]) == 3 and row["messages"][-1]["content"].startswith("Red cells release potassium. [")
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


def test_chat_and_generate_put_passages_into_the_prompt(built_kb, tmp_path, capsys, monkeypatch):
    from honed.infer.generate import ChatModel

    seen = []
    original = ChatModel.generate

    def spy(self, conversations, settings, **kw):
        seen.extend(c.messages[-1].content for c in conversations)
        return original(self, conversations, settings, **kw)

    monkeypatch.setattr(ChatModel, "generate", spy)
    model = ["--model", str(TINY_BASE), "--max-new-tokens", "4", "--kb", "kb", "--kb-k", "2"]
    assert main(["chat", *model, "--prompt", "What does NT-proBNP assess?"]) == 0
    out = capsys.readouterr().out
    assert "Sources:\n  [1] docs/cardiac.pdf — page 2" in out
    assert "[1] (cardiac.pdf — page 2)\nNT-proBNP helps assess heart failure." in seen[-1] and seen[-1].endswith("Question: What does NT-proBNP assess?")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Troponin after heart injury?"}) + "\n")
    assert main(["generate", *model, "--input", str(prompts), "--output", "a.jsonl"]) == 0
    row = json.loads((tmp_path / "a.jsonl").read_text())
    assert row["sources"][0] == "docs/cardiac.pdf — page 1" and len(row["sources"]) == 2
    assert row["prompt"] == "Troponin after heart injury?" and "Troponin rises within hours" in seen[-1]


def test_sample_kb_with_the_default_minilm_embedder(tmp_path, capsys):
    """The shipped pages, indexed with the real all-MiniLM-L6-v2: questions in other words find their page."""
    from honed.guard.knowledge import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path / "kb")
    assert kb.manifest["embedder"] == "minilm"
    report = kb.add([SAMPLE_KB])
    assert len(report.added) == 5 and not report.skipped
    top = kb.search("Why is a potassium result too high when red cells burst?", k=1)[0]
    assert (Path(top.source).name, top.location) == ("chemistry-kidney-liver.md", "Chemistry panels > Potassium and hemolysis")
    top = kb.search("How many months of sugar levels does A1c show?", k=1)[0]
    assert (Path(top.source).name, top.location) == ("glucose-diabetes.md", "Glucose and diabetes tests > HbA1c")
    top = kb.search("溶血为什么让血钾升高", k=1)[0]
    assert (Path(top.source).name, top.location) == ("blood-chemistry-zh.md", "标本溶血")
    # Chunks longer than MiniLM's 256-token window are counted; chunking in its tokens avoids them.
    from honed.guard.knowledge import ChunkSettings

    long = tmp_path / "long.txt"
    long.write_text(" ".join(["The glucose test measures blood sugar after fasting overnight."] * 40))
    assert kb.add([long], ChunkSettings(size=2000, overlap=0)).over_window == 1
    by_tokens = kb.add([long], ChunkSettings(size=200, overlap=20, unit="tokens"))
    assert by_tokens.replaced == [(str(long.resolve()), 3)] and by_tokens.over_window == 0
