"""`add_context`: supporting passages found and cited, distractors kept apart, unanswerable share,
refusals kept, output readable as training data."""

from __future__ import annotations

import json

import pytest

from honed.guard.knowledge.samples import add_context, answer_support, cite
from honed.errors import ConfigError, OutputExistsError
from honed.guard.knowledge import NO_ANSWER, KnowledgeBase
from honed.testing.documents import write_sample_documents

QA = [
    ("en-1", "in_domain", "How long must I fast before a fasting glucose test?", "At least 8 hours without food."),
    ("en-2", "in_domain", "Why does hemolysis change potassium?", "Hemolysis releases potassium from red cells, so the result is falsely high."),
    ("en-3", "in_domain", "What does NT-proBNP help with?", "NT-proBNP helps assess heart failure."),
    ("zh-1", "in_domain", "查糖化血红蛋白需要空腹吗？", "不需要空腹，糖化血红蛋白反映近三个月的平均血糖水平。"),
    ("en-4", "out_of_domain", "Who won the World Cup?", "I can only help with clinical laboratory questions."),
    ("en-5", "in_domain", "What vitamin D level is deficient?", "Below 20 ng/mL is usually called deficient."),  # not in the KB
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    docs = write_sample_documents(root / "docs", with_bad=False)
    (docs / "extra.md").write_text("# Lipids\n\nA lipid panel measures cholesterol and triglycerides.\n\n"
                                   "# Urine\n\nA urinalysis checks urine for protein, glucose and cells.\n\n"
                                   "# Thyroid\n\nTSH is made by the pituitary and controls the thyroid.\n")
    base = KnowledgeBase.create(root / "kb", embedder="char-ngram")
    base.add([docs])
    return base


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": i, "kind": kind, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                       ensure_ascii=False) + "\n" for i, kind, q, a in QA) + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answerable_samples_cite_their_supporting_passage(kb, qa_file, tmp_path):
    out = tmp_path / "rag.jsonl"
    report = add_context(kb, qa_file, out, distractors=2, unanswerable_ratio=0.0, seed=1)
    assert report.to_dict() == {"samples": 6, "answerable": 5, "unanswerable": 0, "out_of_domain": 1, "weak_support": 1, "skipped": 1}
    assert report.weak_support == [f"{qa_file}:6"]
    assert "no user question followed by an assistant answer" in report.skipped[0][1]
    rows = {r["id"]: r for r in _rows(out)}
    expected_source = {"en-1": "docs/glucose.md — Glucose testing", "en-2": "docs/potassium.html — Potassium > Hemolysis",
                       "en-3": "docs/cardiac.pdf — page 2", "zh-1": "docs/glucose.md — 血糖检测"}
    for sample_id, source in expected_source.items():
        row = rows[sample_id]
        (n,) = row["rag"]["support"]
        assert row["rag"]["sources"][n - 1].endswith(source)
        assert len(row["rag"]["sources"]) == 3 and len(set(row["rag"]["sources"])) == 3  # 1 support + 2 distractors
        answer = row["messages"][-1]["content"]
        assert answer.endswith(f"[{n}]")
        user = row["messages"][0]["content"]
        assert f"[{n}] (" in user and user.endswith(dict((q[0], q[2]) for q in QA)[sample_id])
    assert rows["zh-1"]["messages"][0]["content"].startswith("请只根据")
    assert rows["zh-1"]["messages"][-1]["content"] == "不需要空腹，糖化血红蛋白反映近三个月的平均血糖水平。[" + str(rows["zh-1"]["rag"]["support"][0]) + "]"
    refusal = rows["en-4"]
    assert refusal["messages"][-1]["content"] == QA[4][3] and refusal["rag"] == {**refusal["rag"], "answerable": False, "support": []}
    # The output is training data honed reads.
    from honed.data.formats import detect_format, to_conversation

    conv = to_conversation(rows["en-1"], detect_format(rows["en-1"], "x"), "x")
    assert conv.roles() == ["user", "assistant"]


def test_unanswerable_samples_lose_their_support_and_say_so(kb, qa_file, tmp_path):
    out = tmp_path / "rag.jsonl"
    report = add_context(kb, qa_file, out, distractors=2, unanswerable_ratio=1.0, seed=0)
    assert (report.answerable, report.unanswerable, report.out_of_domain) == (0, 5, 1)
    rows = {r["id"]: r for r in _rows(out)}
    assert rows["en-2"]["messages"][-1]["content"] == NO_ANSWER["en"]
    assert rows["zh-1"]["messages"][-1]["content"] == NO_ANSWER["zh"]
    assert not any("Hemolysis" in s for s in rows["en-2"]["rag"]["sources"])
    assert not any("cardiac.pdf" in s for s in rows["en-3"]["rag"]["sources"])
    assert all(len(r["rag"]["sources"]) == 3 for r in rows.values())  # support replaced by another distractor


def test_unsupported_answers_can_be_dropped_or_made_unanswerable(kb, qa_file, tmp_path):
    dropped = add_context(kb, qa_file, tmp_path / "d.jsonl", distractors=2, unanswerable_ratio=0.0, unsupported="drop")
    assert dropped.samples == 5 and "answer not found in the knowledge base" in dropped.skipped[-1][1]
    assert "en-5" not in {r["id"] for r in _rows(tmp_path / "d.jsonl")}
    report = add_context(kb, qa_file, tmp_path / "u.jsonl", distractors=2, unanswerable_ratio=0.0, unsupported="unanswerable")
    assert (report.answerable, report.unanswerable) == (4, 1)
    rows = {r["id"]: r for r in _rows(tmp_path / "u.jsonl")}
    assert rows["en-5"]["messages"][-1]["content"] == NO_ANSWER["en"] and rows["en-1"]["rag"]["answerable"]


def test_the_share_and_the_draws_follow_the_seed(kb, qa_file, tmp_path):
    first = tmp_path / "a.jsonl"
    add_context(kb, qa_file, first, distractors=1, unanswerable_ratio=0.5, seed=3)
    second = tmp_path / "b.jsonl"
    add_context(kb, qa_file, second, distractors=1, unanswerable_ratio=0.5, seed=3)
    assert first.read_text() == second.read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        add_context(kb, qa_file, first)
    with pytest.raises(ConfigError, match="--unanswerable-ratio"):
        add_context(kb, qa_file, tmp_path / "c.jsonl", unanswerable_ratio=1.5)


def test_citation_marks_and_support_measure():
    assert cite("Fasting is not needed.", [2]) == "Fasting is not needed. [2]"
    assert cite("不需要空腹。", [3, 1]) == "不需要空腹。[1][3]"
    assert answer_support("Potassium is falsely raised", "Hemolysis makes potassium falsely high") == pytest.approx(2 / 3)  # words of 3+ letters
    assert answer_support("不需要空腹", "检查前不需要空腹") == 1.0
