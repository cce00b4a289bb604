"""make_pairs: refusal pairs from a model's off-scope answers, hard negatives from the file's own refusals."""

from __future__ import annotations

import json

import pytest

from honed.data.make_pairs import make_pairs, write_pairs
from honed.data.preference import to_preference_pair
from honed.errors import DataError, OutputExistsError


def rec(kind, q, a, lang="en"):
    return {"kind": kind, "lang": lang, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


RECORDS = [
    ("f:1", rec("in_domain", "What is TSH?", "A pituitary hormone.")),
    ("f:2", rec("out_of_domain", "Best pizza?", "I only answer lab questions.")),
    ("f:3", rec("in_domain", "血常规查什么？", "红细胞等。", "zh")),
    ("f:4", rec("out_of_domain", "谁赢了世界杯？", "抱歉，我只回答检验问题。", "zh")),
    ("f:5", rec("near_domain", "Dose of insulin?", "I cannot give treatment advice.")),
]


def test_pairs_from_model_answers_and_own_refusals():
    asked = []

    def answer(convs):
        asked.extend(c.messages[-1].content for c in convs)
        return ["Margherita, of course.", "阿根廷。", "Sorry, I can't help with that."]

    pairs, counts = make_pairs(RECORDS, answer=answer, is_refusal=lambda t: "can't" in t, seed=1)
    assert asked == ["Best pizza?", "谁赢了世界杯？", "Dose of insulin?"]  # only out-of/near-domain prompts go to the model
    assert counts == {"hard_negative": 2, "refusal": 2, "model_also_refused": 1, "refusal_without_model": 0}
    by_id = {p["source"]: p for p in pairs}
    assert by_id["f:2"]["chosen"][0]["content"] == "I only answer lab questions." and by_id["f:2"]["rejected"][0]["content"] == "Margherita, of course."
    # Hard negatives: the answer is chosen, a refusal of the same language is rejected.
    assert by_id["f:1"]["chosen"][0]["content"] == "A pituitary hormone."
    assert by_id["f:1"]["rejected"][0]["content"] in ("I only answer lab questions.", "I cannot give treatment advice.")
    assert by_id["f:3"]["rejected"][0]["content"] == "抱歉，我只回答检验问题。"
    for p in pairs:  # every pair reads back as a training pair
        to_preference_pair(p, "out:1")


def test_without_a_model_only_hard_negatives(tmp_path):
    pairs, counts = make_pairs(RECORDS)
    assert counts["refusal_without_model"] == 3 and {p["kind"] for p in pairs} == {"hard_negative"}
    out = tmp_path / "pairs.jsonl"
    write_pairs(pairs, out)
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == ["f:1", "f:3"]
    with pytest.raises(OutputExistsError):
        write_pairs(pairs, out)


def test_record_without_answer_is_an_error():
    with pytest.raises(DataError, match="f:9: the record has no answer"):
        make_pairs([("f:9", {"kind": "in_domain", "messages": [{"role": "user", "content": "q"}]})])


def test_cli_writes_kto_records_that_read_back(tmp_path):
    from honed.cli import main
    from honed.data.preference import to_kto_sample

    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for _, r in RECORDS))
    out = tmp_path / "kto.jsonl"
    assert main(["data", "make-pairs", str(src), "-o", str(out), "--kto"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [True, False, True, False]  # two hard negatives, no model: no refusal pairs
    assert to_kto_sample(rows[1], "kto:2").completion[0].content in ("I only answer lab questions.", "I cannot give treatment advice.")
    assert main(["data", "make-pairs", str(src), "-o", str(out)]) == 2  # an existing output is kept unless --overwrite
