"""Preference records: every accepted layout, line-precise errors, shared prompt ids, answer-only labels, packed pairs."""

from __future__ import annotations

import json

import pytest
import torch

from honed.config import DataConfig
from honed.data.dataset import DataReport
from honed.data.preference import detect_preference_format, to_kto_sample, to_preference_pair
from honed.data.preference_batch import (collate_pairs, load_preference_items, sequence_logps, tokenize_pair,
                                         tokenize_preference_items)
from honed.data.templates import get_template
from honed.data.tokenize import IGNORE_INDEX
from honed.errors import DataError

MULTI = [{"role": "user", "content": "What is TSH?"}, {"role": "assistant", "content": "A pituitary hormone."},
         {"role": "user", "content": "Normal range?"}]

RECORDS = {
    "pairs": {"prompt": "Normal range?", "chosen": "About 0.4-4.0 mIU/L.", "rejected": "Go ask a doctor.", "system": "Lab only."},
    "openai_pairs": {"prompt": MULTI, "chosen": [{"role": "assistant", "content": "About 0.4-4.0 mIU/L."}],
                     "rejected": [{"role": "assistant", "content": "Go ask a doctor."}]},
    "sharegpt_pairs": {"conversations": [{"from": "human", "value": "What is TSH?"}, {"from": "gpt", "value": "A pituitary hormone."},
                                         {"from": "human", "value": "Normal range?"}],
                       "chosen": {"from": "gpt", "value": "About 0.4-4.0 mIU/L."}, "rejected": {"from": "gpt", "value": "Go ask a doctor."}},
    "alpaca_pairs": {"instruction": "Normal range?", "input": "TSH", "chosen": "About 0.4-4.0 mIU/L.", "rejected": "Go ask a doctor."},
}


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_each_layout_is_detected_and_converted(fmt):
    record = RECORDS[fmt]
    assert detect_preference_format(record, "p.jsonl:1") == fmt
    pair = to_preference_pair(record, "p.jsonl:1")
    assert pair.prompt[-1].role == "user" and pair.chosen[0].content == "About 0.4-4.0 mIU/L." and pair.rejected[0].content == "Go ask a doctor."
    roles = [m.role for m in pair.chosen_conversation().messages]
    want = {"pairs": ["system", "user", "assistant"], "alpaca_pairs": ["user", "assistant"]}.get(fmt, ["user", "assistant", "user", "assistant"])
    assert roles == want


def test_implicit_prompt_from_two_full_conversations():
    record = {"chosen": [*MULTI, {"role": "assistant", "content": "good"}], "rejected": [*MULTI, {"role": "assistant", "content": "bad"}]}
    pair = to_preference_pair(record, "p.jsonl:2")
    assert len(pair.prompt) == 3 and pair.chosen[0].content == "good" and pair.rejected[0].content == "bad"
    record["rejected"][0] = {"role": "user", "content": "other"}
    with pytest.raises(DataError, match=r"p.jsonl:2: without 'prompt'"):
        to_preference_pair(record, "p.jsonl:2")


@pytest.mark.parametrize("record,message", [
    ({"prompt": "q", "chosen": "a"}, "cannot tell the preference format"),
    ({"prompt": "q", "chosen": None, "rejected": "b"}, "field 'chosen' is missing"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "must be an assistant message"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "x", "rejected": "y"}, "must end with a user message"),
    ({"prompt": 3.5j, "chosen": "x", "rejected": "y"}, "field 'prompt' must be text"),
])
def test_bad_records_name_the_line_and_field(record, message):
    with pytest.raises(DataError, match=f"p.jsonl:7.*{message}"):
        to_preference_pair(record, "p.jsonl:7")


def test_kto_records():
    s = to_kto_sample({"prompt": "q", "completion": "a", "label": "false"}, "k.csv:3")
    assert s.desirable is False and s.completion[0].content == "a"
    with pytest.raises(DataError, match=r"k.jsonl:4: field 'label' must be true"):
        to_kto_sample({"prompt": "q", "completion": "a", "label": "maybe"}, "k.jsonl:4")


def test_file_errors_are_line_precise_and_skips_are_counted(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(RECORDS["pairs"])
    path.write_text(good + "\n\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n" + good + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:3: cannot tell"):
        load_preference_items(DataConfig(train=[str(path)]), 0, DataReport())
    report = DataReport()
    train, _ = load_preference_items(DataConfig(train=[str(path)], on_bad_record="skip", system_prompt="Scope."), 0, report)
    assert len(train) == 2 and [w for w, _ in report.skipped] == [f"{path}:3"]
    assert train[0].prompt[0].content == "Scope.\n\nLab only."  # scope prompt first, the record's own system text kept
    with pytest.raises(DataError, match="trains on prompt/completion/label records"):
        load_preference_items(DataConfig(train=[str(path)]), 0, DataReport(), kto=True)


@pytest.mark.parametrize("family,name", [("qwen2", "chatml"), ("llama3", "llama3")])
def test_pair_shares_prompt_ids_and_labels_only_the_final_answer(tiny_tokenizer, family, name):
    tok = tiny_tokenizer(family)
    pair = to_preference_pair(RECORDS["openai_pairs"], "p.jsonl:1")
    tp = tokenize_pair(pair, tok, get_template(name), max_seq_length=512)
    c, r = tp.chosen, tp.rejected
    first = next(i for i, lab in enumerate(c.labels) if lab != IGNORE_INDEX)
    assert first == next(i for i, lab in enumerate(r.labels) if lab != IGNORE_INDEX)
    assert c.input_ids[:first] == r.input_ids[:first]  # the same prompt, token for token
    answer = tok.decode([t for t, lab in zip(c.input_ids, c.labels) if lab != IGNORE_INDEX])
    assert answer.startswith("About 0.4-4.0 mIU/L.") and "pituitary" not in answer  # earlier assistant turn is context only
    whole = tok.apply_chat_template(pair.chosen_conversation().to_dict()["messages"], tokenize=False)
    assert c.input_ids == tok(whole, add_special_tokens=False)["input_ids"]


def test_collation_layout_and_sequence_logps(tiny_tokenizer):
    tok = tiny_tokenizer("qwen2")
    items = tokenize_preference_items([to_preference_pair(RECORDS[f], "p:1") for f in ("pairs", "openai_pairs", "sharegpt_pairs")],
                                      tok, get_template("chatml"), DataConfig(train=["x"], max_seq_length=512), DataReport())
    items[0].ref_logps, items[1].ref_logps, items[2].ref_logps = (-1.0, -2.0), (-3.0, -4.0), (-5.0, -6.0)
    for packing, padding_free in ((True, False), (False, False), (True, True)):
        batch = collate_pairs([[items[0], items[1]], [items[2]]], pad_id=0, packing=packing, padding_free=padding_free)
        assert batch["ref_logps"].tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
        # A token log-prob of -1 everywhere: each sequence's sum is minus its count of answer tokens.
        token_logps = torch.where(batch["labels"][:, 1:] != IGNORE_INDEX, -1.0, 0.0)
        sums, counts = sequence_logps(token_logps, batch, 6)
        want = [s.n_trainable for x in items for s in x.sequences]
        assert counts.tolist() == want and sums.tolist() == [-float(n) for n in want]


def test_kto_mismatched_sequences(tiny_tokenizer):
    tok = tiny_tokenizer("qwen2")
    samples = [to_kto_sample({"prompt": f"question {i}", "completion": f"answer number {i}", "label": i % 2 == 0}, f"k:{i}") for i in range(3)]
    items = tokenize_preference_items(samples, tok, get_template("chatml"), DataConfig(train=["x"]), DataReport())
    text = tok.decode(items[1].mismatched.input_ids)
    assert "question 1" in text and "answer number 0" in text and "answer number 1" not in text
    assert "question 0" in tok.decode(items[0].mismatched.input_ids) and "answer number 2" in tok.decode(items[0].mismatched.input_ids)
    batch = collate_pairs([items], pad_id=0, packing=True)
    assert batch["desirable"].tolist() == [True, False, True]
    # Both answers of one prompt side by side: the mismatched answer comes from another prompt.
    same = [to_kto_sample({"prompt": p, "completion": c, "label": lab}, "k:1")
            for p, c, lab in (("question A", "good A", True), ("question A", "bad A", False), ("question B", "good B", True))]
    items = tokenize_preference_items(same, tok, get_template("chatml"), DataConfig(train=["x"]), DataReport())
    texts = [tok.decode(x.mismatched.input_ids) for x in items]
    assert "question A" in texts[1] and "good B" in texts[1]  # not "good A": same prompt, skipped
    assert "question B" in texts[2] and "bad A" in texts[2]


def test_data_inspect_shows_both_sequences_of_each_pair(tiny_model_dir, tmp_path):
    from honed.config import config_from_dict
    from honed.data.inspect import inspect_data
    from honed.model.load import load_tokenizer

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(RECORDS[f]) + "\n" for f in ("pairs", "openai_pairs")))
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_model_dir("qwen2"))}, "data": {"train": [str(path)]}, "objective": "dpo"})
    found = inspect_data(cfg, load_tokenizer(cfg.model), "qwen2")
    assert found.n_train == 2 and len(found.samples) == 4 and found.formats == {str(path): "pairs"}
    assert found.samples[0].input_ids[:5] == found.samples[1].input_ids[:5]  # chosen and rejected share the prompt
