import json

import pytest

from honed.config import DataConfig
from honed.data.dataset import DataReport, data_fingerprint, load_conversations
from honed.errors import DataError


def write_qa(path, n, prefix="q"):
    path.write_text("".join(json.dumps({"instruction": f"{prefix}{i}", "output": f"a{i}"}) + "\n" for i in range(n)))
    return path


def questions(convs):
    return [c.messages[-2].content for c in convs]


def test_weights_repeat_and_subsample(tmp_path):
    a, b = write_qa(tmp_path / "a.jsonl", 4, "a"), write_qa(tmp_path / "b.jsonl", 4, "b")
    data = DataConfig(train=[{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}])
    train, val = load_conversations(data, seed=0, report=DataReport())
    qs = questions(train)
    assert sorted(q for q in qs if q.startswith("a")) == sorted(["a0", "a1", "a2", "a3"] * 2)
    assert len([q for q in qs if q.startswith("b")]) == 2 and not val
    again, _ = load_conversations(data, seed=0, report=DataReport())
    assert questions(again) == qs  # seeded


def test_scope_prompt_goes_first_and_keeps_own_system(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": "q", "output": "a", "system": "Own rules."}) + "\n" + json.dumps({"instruction": "q2", "output": "a2"}) + "\n")
    train, _ = load_conversations(DataConfig(train=[str(p)], system_prompt="Scope."), seed=0, report=DataReport())
    assert train[0].messages[0].content == "Scope.\n\nOwn rules." and train[1].messages[0].content == "Scope."
    per_file, _ = load_conversations(DataConfig(train=[{"path": str(p), "system_prompt": "File scope."}], system_prompt="Scope."), seed=0, report=DataReport())
    assert per_file[1].messages[0].content == "File scope."


def test_val_ratio_carves_disjoint_split(tmp_path):
    p = write_qa(tmp_path / "d.jsonl", 20)
    train, val = load_conversations(DataConfig(train=[str(p)], val_ratio=0.2), seed=1, report=DataReport())
    assert len(val) == 4 and len(train) == 16
    assert not set(questions(train)) & set(questions(val))


def test_skip_counts_every_bad_record(tmp_path):
    p = write_qa(tmp_path / "d.jsonl", 3)
    p.write_text(p.read_text() + '{"instruction": "no output"}\n{"instruction": 5, "output": []}\n')
    report = DataReport()
    train, _ = load_conversations(DataConfig(train=[str(p)], on_bad_record="skip"), seed=0, report=report)
    assert len(train) == 3 and [w.rsplit(":", 1)[1] for w, _ in report.skipped] == ["4", "5"]
    assert "2 skipped" in report.summary()
    with pytest.raises(DataError, match=r"d\.jsonl:4: field 'output' is missing"):
        load_conversations(DataConfig(train=[str(p)]), seed=0, report=DataReport())


def test_fingerprint_changes_with_data_bytes(tmp_path):
    p = write_qa(tmp_path / "d.jsonl", 3)
    data = DataConfig(train=[str(p)])
    before = data_fingerprint(data)
    p.write_text(p.read_text().replace("a2", "a2!"))
    assert data_fingerprint(data) != before


def test_too_small_weight_is_an_error_not_a_silent_drop(tmp_path):
    p = write_qa(tmp_path / "d.jsonl", 2)
    with pytest.raises(DataError, match=r"d\.jsonl: weight 0\.2 of 2 records keeps none"):
        load_conversations(DataConfig(train=[{"path": str(p), "weight": 0.2}]), seed=0, report=DataReport())


def test_fingerprint_covers_the_scope_prompt_file(tmp_path):
    p = write_qa(tmp_path / "d.jsonl", 2)
    scope = tmp_path / "scope.txt"
    scope.write_text("Lab questions only.")
    data = DataConfig(train=[str(p)], system_prompt_file=str(scope))
    before = data_fingerprint(data)
    scope.write_text("Anything goes.")
    assert data_fingerprint(data) != before
