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


LATIN1_LINE = b'{"instruction": "caf\xe9", "output": "ok"}\n'  # Latin-1 "café": valid JSON syntax, not UTF-8


def test_bytes_that_are_not_utf8_are_located_or_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(write_qa(tmp_path / "x.jsonl", 2).read_bytes() + LATIN1_LINE + b'{"instruction": "q9", "output": "a9"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 21\).*on_bad_record: skip"):
        load_conversations(DataConfig(train=[str(p)]), seed=0, report=DataReport())
    report = DataReport()
    train, _ = load_conversations(DataConfig(train=[str(p)], on_bad_record="skip"), seed=0, report=report)
    assert questions(train) == ["q0", "q1", "q9"]
    assert [(w.rsplit(":", 1)[1], r.split(" (")[0]) for w, r in report.skipped] == [("3", "not UTF-8 text")]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_not_utf8_in_csv_and_json_names_the_record(tmp_path, suffix):
    p = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        p.write_bytes(b"instruction,output\nq0,a0\n" + "血常规,ok\n".encode("gbk") + b"q2,a2\n")
    else:
        p.write_bytes(b'[{"instruction": "q0", "output": "a0"},\n' + '{"instruction": "血常规", "output": "ok"},\n'.encode("gbk")
                      + b'{"instruction": "q2", "output": "a2"}]\n')
    line = 3 if suffix == ".csv" else 2  # the CSV header is line 1
    with pytest.raises(DataError, match=rf"d\{suffix}:{line}: not UTF-8 text \(byte 0xb3\)"):
        load_conversations(DataConfig(train=[str(p)]), seed=0, report=DataReport())
    report = DataReport()
    train, _ = load_conversations(DataConfig(train=[str(p)], on_bad_record="skip"), seed=0, report=report)
    assert questions(train) == ["q0", "q2"] and [w.rsplit(":", 1)[1] for w, _ in report.skipped] == [str(line)]


def test_skip_goes_past_a_line_that_is_not_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "q0", "output": "a0"}\n{"instruction": "q1", "output": \n[1, 2]\n{"instruction": "q3", "output": "a3"}\n')
    report = DataReport()
    train, _ = load_conversations(DataConfig(train=[str(p)], on_bad_record="skip"), seed=0, report=report)
    assert questions(train) == ["q0", "q3"]
    assert [(w.rsplit(":", 1)[1], r.split(" (")[0]) for w, r in report.skipped] == [
        ("2", "not valid JSON"), ("3", "each line must be a JSON object, got list")]
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_conversations(DataConfig(train=[str(p)]), seed=0, report=DataReport())


@pytest.mark.parametrize("record", [
    {"instruction": "q", "output": ""},
    {"instruction": "q", "output": "   "},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"},
                       {"from": "gpt", "value": "\n"}]},
])
def test_an_empty_answer_is_a_bad_record(tmp_path, record):
    p = tmp_path / "d.jsonl"
    good = json.loads(json.dumps(record).replace('""', '"a"').replace('"   "', '"a"').replace('"\\n"', '"a"'))
    p.write_text("".join(json.dumps(r) + "\n" for r in (good, good, record)))
    with pytest.raises(DataError, match=r"d\.jsonl:3: assistant turn \d is empty: a model trained on it learns to answer nothing"):
        load_conversations(DataConfig(train=[str(p)]), seed=0, report=DataReport())
    report = DataReport()
    train, _ = load_conversations(DataConfig(train=[str(p)], on_bad_record="skip"), seed=0, report=report)
    assert len(train) == 2 and [w.rsplit(":", 1)[1] for w, _ in report.skipped] == ["3"]


def test_a_kept_read_is_used_once_and_only_while_the_files_are_unchanged(tmp_path, monkeypatch):
    import os

    import honed.data.dataset as dataset
    from honed.config import DataConfig

    reads = []
    real = dataset.read_records
    monkeypatch.setattr(dataset, "read_records", lambda path, *a, **k: reads.append(os.path.basename(path)) or real(path, *a, **k))
    train_file, val_file = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    row = '{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}\n'
    train_file.write_text("".join(row % i for i in range(5)) + "not json\n")
    val_file.write_text(row % 9)
    data = DataConfig(train=[str(train_file)], validation=[str(val_file)], on_bad_record="skip")
    fresh = dataset.DataReport()
    want = dataset.load_conversations(data, 0, fresh)
    reads.clear()

    dataset.keep_read(data, dataset.read_sources(data))
    report = dataset.DataReport()
    assert dataset.load_conversations(data, 0, report) == want and report == fresh  # the same conversations, skips and counts
    assert reads == ["t.jsonl", "v.jsonl"]  # by read_sources alone
    dataset.load_conversations(data, 0, dataset.DataReport())
    assert reads == ["t.jsonl", "v.jsonl"] * 2  # a kept read serves one load

    dataset.keep_read(data, dataset.read_sources(data))
    train_file.write_text(row % 1)  # changed after the read: read again
    train, _ = dataset.load_conversations(data, 0, dataset.DataReport())
    assert len(train) == 1 and reads == ["t.jsonl", "v.jsonl"] * 4
