"""The LanceDB knowledge base with the char-ngram embedder: adding, replacing, searching, refusing."""

from __future__ import annotations

import pytest

from honed.errors import ConfigError, DataError, OutputExistsError
from honed.guard.knowledge import ChunkSettings, KnowledgeBase
from honed.testing.documents import write_sample_documents


@pytest.fixture
def kb_and_docs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sources are shown relative to the working folder
    docs = write_sample_documents(tmp_path / "docs")
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="char-ngram")
    return kb, docs


def test_add_reports_every_file_and_indexes_each_type(kb_and_docs):
    kb, docs = kb_and_docs
    report = kb.add([docs, "missing.md"])
    assert sorted(report.added) == [("docs/cardiac.pdf", 2), ("docs/glucose.md", 3), ("docs/potassium.html", 2), ("docs/turnaround.txt", 1)]
    assert sorted(report.skipped) == [("docs/broken.pdf", "unreadable PDF (Stream has ended unexpectedly)"),
                                      ("docs/empty.md", "no text found"),
                                      ("docs/scanned.pdf", "no text found (a scanned PDF needs OCR first)"),
                                      ("missing.md", "not found")]
    assert len(kb) == 8 and kb.stats()["by_kind"] == {"pdf": 1, "markdown": 1, "html": 1, "text": 1}
    top = kb.search("heart failure NT-proBNP", k=2)
    assert (top[0].source, top[0].location, top[0].page) == ("docs/cardiac.pdf", "page 2", 2)
    assert top[0].citation() == "cardiac.pdf — page 2"
    assert top[0].score > top[1].score
    top = kb.search("hemolysis falsely high potassium", k=1)[0]
    assert (top.source, top.location) == ("docs/potassium.html", "Potassium > Hemolysis")


def test_chinese_queries_match_through_the_full_text_index(kb_and_docs):
    kb, docs = kb_and_docs
    kb.add([docs / "glucose.md"])
    # The word 糖尿病 sits inside an unspaced sentence: only a tokenizer that segments Chinese finds it.
    hits = kb._table.search("糖尿病", query_type="fts").limit(3).to_list()
    assert [h["location"] for h in hits] == ["血糖检测"]
    assert kb.search("糖尿病的诊断", k=1)[0].location == "血糖检测"


def test_adding_again_skips_unchanged_and_replaces_changed_files(kb_and_docs):
    kb, docs = kb_and_docs
    kb.add([docs])
    again = kb.add([docs / "glucose.md", docs / "turnaround.txt"])
    assert again.unchanged == ["docs/glucose.md", "docs/turnaround.txt"] and not again.added and not again.replaced
    (docs / "turnaround.txt").write_text("Urgent samples are reported within thirty minutes.\n")
    changed = kb.add([docs / "turnaround.txt"])
    assert changed.replaced == [("docs/turnaround.txt", 1)]
    texts = [p.text for p in kb.passages() if p.source == "docs/turnaround.txt"]
    assert texts == ["Urgent samples are reported within thirty minutes."]
    (docs / "potassium.html").write_text("<html><body><script>x()</script></body></html>")
    emptied = kb.add([docs / "potassium.html"])
    assert emptied.skipped == [("docs/potassium.html", "no text found; its earlier chunks were removed")]
    assert emptied.removed == ["docs/potassium.html"] and not any(p.source == "docs/potassium.html" for p in kb.passages())
    rechunked = kb.add([docs / "glucose.md"], ChunkSettings(size=60, overlap=0))
    assert rechunked.replaced[0][0] == "docs/glucose.md" and rechunked.replaced[0][1] > 3
    assert len(kb) == 1 + 2 + rechunked.replaced[0][1]
    # A reopened KB remembers documents and settings.
    reopened = KnowledgeBase.open(kb.folder)
    assert reopened.add([docs / "glucose.md"], ChunkSettings(size=60, overlap=0)).unchanged == ["docs/glucose.md"]
    assert reopened.remove(["docs/glucose.md", "docs/nothing.md"]) == ["docs/glucose.md"]
    assert {p.source for p in reopened.passages()} == {"docs/cardiac.pdf", "docs/turnaround.txt"}
    (docs / "turnaround.txt").unlink()
    pruned = reopened.add([docs], prune=True)
    assert pruned.removed == ["docs/turnaround.txt"] and pruned.added == [("docs/glucose.md", 3)]
    assert {d["source"] for d in reopened.documents()} == {"docs/cardiac.pdf", "docs/glucose.md"}
    assert {p.source for p in reopened.passages()} == {"docs/cardiac.pdf", "docs/glucose.md"}


def test_a_kb_refuses_another_embedder_and_bad_folders(kb_and_docs, tmp_path):
    kb, docs = kb_and_docs
    kb.add([docs / "turnaround.txt"])
    with pytest.raises(ConfigError, match="built with embedder 'char-ngram:4096', not 'char-ngram:1024'"):
        KnowledgeBase.open(kb.folder, embedder="char-ngram:1024")
    assert KnowledgeBase.open(kb.folder).embedder.name == "char-ngram:4096"
    with pytest.raises(OutputExistsError, match="already holds a knowledge base"):
        KnowledgeBase.create(kb.folder, embedder="char-ngram")
    with pytest.raises(OutputExistsError, match="not an empty folder"):
        KnowledgeBase.create(docs, embedder="char-ngram")
    with pytest.raises(DataError, match="no knowledge base here"):
        KnowledgeBase.open(tmp_path / "nowhere")
    with pytest.raises(DataError, match="empty search query"):
        kb.search("  ")
