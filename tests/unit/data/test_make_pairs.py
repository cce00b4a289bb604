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
    assert {k: counts[k] for k in ("hard_negative", "refusal", "model_also_refused", "refusal_without_model")} == {
        "hard_negative": 2, "refusal": 2, "model_also_refused": 1, "refusal_without_model": 0}
    assert counts["made"] == counts["written"] == {"refusal": 2, "hard_negative": 2} and counts["warnings"] == []
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
    # Nothing to balance against: every hard negative is kept, and a warning says what DPO would learn.
    assert counts["written"] == {"refusal": 0, "hard_negative": 2} and counts["dropped"] == 0
    assert counts["warnings"] == ["no refusal pairs: DPO on hard negatives alone teaches the model to never refuse (give --model to make refusal pairs)"]
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


# Six in-domain records against two out-of-domain ones that the model answers: 6 hard negatives, 2 refusal pairs.
UNEVEN = [(f"u:{i}", rec("in_domain", f"What is test {i}?", f"Answer {i}.")) for i in range(1, 7)] + [
    ("u:7", rec("out_of_domain", "Best pizza?", "I only answer lab questions.")),
    ("u:8", rec("out_of_domain", "Who won?", "Sorry, lab questions only.")),
]


def _uneven(**kw):
    return make_pairs(UNEVEN, answer=lambda convs: ["Margherita.", "Argentina."], seed=0, **kw)


def test_downsample_keeps_a_seeded_subset_of_the_larger_kind():
    pairs, counts = _uneven(balance="downsample")
    assert counts["balance"] == "downsample" and counts["made"] == {"refusal": 2, "hard_negative": 6}
    assert counts["written"] == {"refusal": 2, "hard_negative": 2} and counts["dropped"] == 4 and counts["repeated"] == 0
    assert (counts["refusal"], counts["hard_negative"]) == (2, 2) and counts["warnings"] == []
    assert [p["source"] for p in pairs] == ["u:4", "u:6", "u:7", "u:8"]  # file order kept; which ones: seeded (seed 0)
    assert [p["source"] for p in _uneven(balance="downsample")[0]] == ["u:4", "u:6", "u:7", "u:8"]
    _, ratio2 = _uneven(balance="downsample", max_ratio=2)
    assert ratio2["written"] == {"refusal": 2, "hard_negative": 4} and ratio2["dropped"] == 2


def test_upsample_is_the_default_and_repeats_the_smaller_kind_after_the_originals():
    pairs, counts = _uneven()
    assert counts["balance"] == "upsample" and counts["written"] == {"refusal": 6, "hard_negative": 6} and counts["repeated"] == 4 and counts["dropped"] == 0
    assert [p["source"] for p in pairs] == [f"u:{i}" for i in range(1, 9)] + ["u:7", "u:8", "u:7", "u:8"]
    _, ratio_4 = _uneven(balance="upsample", max_ratio=4)  # 6 / 4 → 2 refusal pairs suffice
    assert ratio_4["written"] == {"refusal": 2, "hard_negative": 6} and ratio_4["repeated"] == 0
    _, ratio_1_5 = _uneven(balance="upsample", max_ratio=1.5)  # ceil(6 / 1.5) = 4: each refusal pair once more
    assert ratio_1_5["written"] == {"refusal": 4, "hard_negative": 6} and ratio_1_5["repeated"] == 2


def test_none_keeps_everything_and_warns_when_one_kind_dominates():
    pairs, counts = _uneven(balance="none")
    assert len(pairs) == 8 and counts["written"] == counts["made"] == {"refusal": 2, "hard_negative": 6}
    assert counts["warnings"] == ["6 hard_negative pairs against 2 refusal: DPO may learn never to refuse; "
                                  "balance them (--balance downsample|upsample)"]
    _, bad = _uneven(balance="upsample", max_ratio=2.5)  # ceil(6 / 2.5) = 3 refusal pairs: 2:1 is no warning
    assert bad["written"] == {"refusal": 3, "hard_negative": 6} and bad["warnings"] == []


@pytest.mark.parametrize("kw, match", [({"balance": "weights"}, "balance: 'weights' is not one of"),
                                       ({"max_ratio": 0.5}, "max_ratio: 0.5 must be at least 1")])
def test_bad_balance_settings_are_named(kw, match):
    with pytest.raises(DataError, match=match):
        _uneven(**kw)


def test_cli_balance_flags_and_counts_table(tmp_path, capsys):
    from honed.cli import main

    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for _, r in UNEVEN))
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "make-pairs", str(src), "-o", str(out), "--balance", "none"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "hard-negative │ 6 │ 6" in printed and "refusal │ 0 │ 0" in printed and "no refusal pairs" in printed
    assert len(out.read_text().splitlines()) == 6
