import json

import pandas as pd
import pytest

from honed.data.formats import detect_format, to_conversation
from honed.data.readers import read_records
from honed.errors import DataError

ALPACA = {"instruction": "What is TSH?", "input": "", "output": "Thyroid-stimulating hormone.", "system": "Be brief.", "history": [["hi", "hello"]]}
SHAREGPT = {"conversations": [{"from": "human", "value": "What is ALT?"}, {"from": "gpt", "value": "A liver enzyme."}], "system": "S"}
OPENAI = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\nA"}]}


def test_detect_each_format():
    assert detect_format(ALPACA, "x") == "alpaca"
    assert detect_format(SHAREGPT, "x") == "sharegpt"
    assert detect_format(OPENAI, "x") == "openai"
    with pytest.raises(DataError, match=r"x: cannot tell the data format.*question"):
        detect_format({"question": "q"}, "x")


def test_alpaca_with_system_and_history():
    conv = to_conversation(ALPACA, "alpaca", "f:1")
    assert conv.roles() == ["system", "user", "assistant", "user", "assistant"]
    assert conv.messages[3].content == "What is TSH?" and conv.messages[4].content == "Thyroid-stimulating hormone."


def test_alpaca_input_appended():
    conv = to_conversation({"instruction": "Explain", "input": "HbA1c", "output": "A"}, "alpaca", "f:1")
    assert conv.messages[0].content == "Explain\n\nHbA1c"


def test_sharegpt_roles_and_system():
    conv = to_conversation(SHAREGPT, "sharegpt", "f:1")
    assert conv.roles() == ["system", "user", "assistant"]


def test_openai_thinking_split_and_content_parts():
    conv = to_conversation(OPENAI, "openai", "f:1")
    assert conv.messages[1].reasoning == "r" and conv.messages[1].content == "A"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": "c"}]}
    assert to_conversation(parts, "openai", "f:1").messages[0].content == "ab"


@pytest.mark.parametrize(
    "record, fmt, needle",
    [
        ({"instruction": "q"}, "alpaca", "field 'output' is missing"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", "conversations[0].from"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "openai", "messages[0].role"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "openai", "two user turns"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "openai", "must start with a user turn"),
    ],
)
def test_bad_records_name_place_and_field(record, fmt, needle):
    with pytest.raises(DataError) as err:
        to_conversation(record, fmt, "data.jsonl:7")
    assert "data.jsonl:7" in str(err.value) and needle in str(err.value)


def test_jsonl_locations_and_bad_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ALPACA) + "\n\n" + "{not json\n")
    it = read_records(p)
    loc, _ = next(it)
    assert loc.endswith("d.jsonl:1")
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        next(it)


def test_json_array_reports_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[\n  " + json.dumps(ALPACA) + ",\n  " + json.dumps(OPENAI) + "\n]\n")
    locs = [loc.rsplit(":", 1)[1] for loc, _ in read_records(p)]
    assert locs == ["2", "3"]


def test_csv_parquet_and_saved_dataset(tmp_path):
    rows = [{"instruction": "q1", "input": "", "output": "a1"}, {"instruction": "q2", "input": "", "output": "a2"}]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path, first_loc in ((tmp_path / "d.csv", ":2"), (tmp_path / "d.parquet", ":row 0"), (tmp_path / "saved", ":row 0")):
        got = list(read_records(path))
        assert [r["output"] for _, r in got] == ["a1", "a2"]
        assert got[0][0].endswith(first_loc)


def test_csv_json_cells_decode(tmp_path):
    p = tmp_path / "s.csv"
    pd.DataFrame([{"conversations": json.dumps(SHAREGPT["conversations"])}]).to_csv(p, index=False)
    (_, rec), = read_records(p)
    assert detect_format(rec, "x") == "sharegpt"


def test_unsupported_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_records(tmp_path / "d.txt"))
    with pytest.raises(DataError, match="not found"):
        list(read_records(tmp_path / "nope.jsonl"))


def test_csv_keeps_json_looking_answers_as_text(tmp_path):
    p = tmp_path / "structured.csv"
    pd.DataFrame([{"instruction": "Extract the name", "input": "Bob is 3", "output": '{"name": "Bob"}'}]).to_csv(p, index=False)
    (_, rec), = read_records(p)
    assert rec["output"] == '{"name": "Bob"}'
    assert to_conversation(rec, "alpaca", "x").messages[-1].content == '{"name": "Bob"}'


def test_generation_prompts_keep_what_training_kept():
    from honed.data.prompts import prompt_conversation

    sharegpt = {"system": "Own rules.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    conv, ref = prompt_conversation(sharegpt, "x:1", system="Scope.")
    assert [(m.role, m.content) for m in conv.messages] == [("system", "Scope.\n\nOwn rules."), ("user", "hi")] and ref == "hello"
    alpaca = {"instruction": "q2", "input": "ctx", "output": "a2", "history": [["q1", "a1"]]}
    conv, ref = prompt_conversation(alpaca, "x:2")
    assert [m.content for m in conv.messages] == ["q1", "a1", "q2\n\nctx"] and ref == "a2"
    # A record that already carries the scope prompt does not get it twice.
    conv, _ = prompt_conversation({"messages": [{"role": "system", "content": "Scope."}, {"role": "user", "content": "q"}]}, "x:3", system="Scope.")
    assert conv.messages[0].content == "Scope."


def test_generation_input_that_is_not_utf8_is_a_located_error(tmp_path):
    # `honed generate` reads its prompts with read_records: a Latin-1 byte names file:line, never a raw UnicodeDecodeError.
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b'{"prompt": "ok"}\n{"prompt": "na\xefve"}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: not UTF-8 text \(byte 0xef at column 15\)"):
        list(read_records(p))
    skipped = []
    assert [r["prompt"] for _, r in read_records(p, on_bad=lambda w, why: skipped.append(w))] == ["ok"]
    assert skipped == [f"{p}:2"]
