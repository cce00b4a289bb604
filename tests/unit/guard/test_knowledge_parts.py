"""Loaders (Markdown, HTML, PDF, text), chunking and the RAG prompt layout, pinned on small inputs."""

from __future__ import annotations

import pytest

from honed.errors import ConfigError
from honed.guard.knowledge.chunking import ChunkSettings, chunk_sections, length_function
from honed.guard.knowledge.loaders import Section, UnreadableDocument, html_sections, load_sections, markdown_sections
from honed.guard.knowledge.prompt import NO_ANSWER, build_rag_messages, retrieval_messages
from honed.guard.knowledge.store import Passage
from honed.testing.documents import HTML, MARKDOWN, write_sample_documents


def test_markdown_splits_at_headings_but_not_inside_code_fences():
    sections = markdown_sections(MARKDOWN)
    assert [s.location for s in sections] == ["Glucose testing", "Glucose testing > HbA1c", "血糖检测"]
    assert "# not a heading: inside a code fence" in sections[1].text
    setext = markdown_sections("---\ntitle: front matter\n---\nLipids\n======\n\nA lipid panel.\n\nLDL\n---\nLDL is ...\n\n- a list item\n")
    assert [(s.location, s.text) for s in setext] == [("Lipids", "A lipid panel."), ("Lipids > LDL", "LDL is ...\n\n- a list item")]


def test_html_keeps_visible_text_under_its_headings():
    sections = html_sections(HTML)
    assert [s.location for s in sections] == ["Potassium", "Potassium > Hemolysis"]
    assert sections[1].text == ("Hemolysis releases potassium from red cells and makes the result falsely high.\n\n"
                                "Avoid fist clenching.\n\nProcess the sample quickly.")
    joined = " ".join(s.text for s in sections)
    assert "tracking" not in joined and "Home" not in joined and "Copyright" not in joined and "color" not in joined


def test_pdf_pages_are_sections_and_bad_pdfs_say_why(tmp_path):
    docs = write_sample_documents(tmp_path)
    sections = load_sections(docs / "cardiac.pdf")
    assert [(s.location, s.page, s.text) for s in sections] == [
        ("page 1", 1, "Troponin rises within hours of heart muscle injury."), ("page 2", 2, "NT-proBNP helps assess heart failure.")]
    with pytest.raises(UnreadableDocument, match="scanned PDF needs OCR"):
        load_sections(docs / "scanned.pdf")
    with pytest.raises(UnreadableDocument, match="unreadable PDF"):
        load_sections(docs / "broken.pdf")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UnreadableDocument, match="not UTF-8"):
        load_sections(tmp_path / "latin1.txt")


def test_chunks_pack_sentences_and_overlap_by_whole_sentences():
    text = "Aa aa. Bb bb. Cc cc. Dd dd.\n\nEe ee."
    chunks = chunk_sections([Section(text, "H", 0)], ChunkSettings(size=16, overlap=7))
    assert [c.text for c in chunks] == ["Aa aa. Bb bb.", "Bb bb. Cc cc.", "Cc cc. Dd dd.", "Dd dd.\n\nEe ee."]
    assert {c.location for c in chunks} == {"H"}
    no_overlap = chunk_sections([Section(text)], ChunkSettings(size=16, overlap=0))
    assert [c.text for c in no_overlap] == ["Aa aa. Bb bb.", "Cc cc. Dd dd.", "Ee ee."]


def test_chinese_is_cut_at_its_sentence_ends_and_long_runs_by_size():
    chunks = chunk_sections([Section("空腹血糖是指。餐后血糖是指。糖化血红蛋白反映。")], ChunkSettings(size=16, overlap=0))
    assert [c.text for c in chunks] == ["空腹血糖是指。餐后血糖是指。", "糖化血红蛋白反映。"]
    assert [c.text for c in chunk_sections([Section("x" * 40)], ChunkSettings(size=16, overlap=0))] == ["x" * 16, "x" * 16, "x" * 8]


def test_token_unit_counts_with_a_tokenizer():
    class WordTokenizer:  # one token per word, so sizes are easy to read
        def __call__(self, text, **kwargs):
            return {"input_ids": text.split()}

    measure = length_function(ChunkSettings(size=16, overlap=0, unit="tokens"), WordTokenizer())
    chunks = chunk_sections([Section("one two three. four five six. seven eight.")], ChunkSettings(size=16, overlap=0, unit="tokens"), measure)
    assert [c.text for c in chunks] == ["one two three. four five six. seven eight."]  # 8 words < 16 tokens
    with pytest.raises(ConfigError, match="--tokenizer"):
        length_function(ChunkSettings(unit="tokens"), None)
    with pytest.raises(ConfigError, match="--overlap"):
        ChunkSettings(size=100, overlap=100)


def test_rag_messages_number_the_sources_in_the_question_language():
    passages = [Passage("HbA1c needs no fasting.", "docs/glucose.md", "Glucose > HbA1c", 0.03), Passage("Stat tests take an hour.", "t.txt", "", 0.01)]
    msgs = build_rag_messages([{"role": "system", "content": "Lab expert."}, {"role": "user", "content": "Fast for HbA1c?"}], passages)
    assert msgs[0] == {"role": "system", "content": "Lab expert."}
    assert msgs[1]["content"].endswith("Context:\n[1] (glucose.md — Glucose > HbA1c)\nHbA1c needs no fasting.\n\n"
                                       "[2] (t.txt)\nStat tests take an hour.\n\nQuestion: Fast for HbA1c?")
    assert "cite" in msgs[1]["content"].lower() and "does not contain the answer" in msgs[1]["content"]
    from honed.data.conversation import Message

    zh = build_rag_messages([Message("user", "糖化血红蛋白需要空腹吗？")], passages[:1])
    assert isinstance(zh[0], Message)
    assert zh[0].content.startswith("请只根据下面编号的参考资料回答问题") and zh[0].content.endswith("问题：糖化血红蛋白需要空腹吗？")
    assert NO_ANSWER["zh"] != NO_ANSWER["en"]


def test_retrieval_messages_uses_the_last_user_turn():
    class FakeKB:
        def search(self, query, k):
            self.asked = (query, k)
            return [Passage("text", "a.md", "A", 1.0)]

    kb = FakeKB()
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}]
    msgs, passages = retrieval_messages(kb, history, 3)
    assert kb.asked == ("second", 3) and len(passages) == 1
    assert msgs[:2] == history[:2] and msgs[2]["content"].endswith("Question: second") and history[2]["content"] == "second"
