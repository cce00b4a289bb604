"""`honed quickstart` end to end on the shipped tiny model and data (the README's main job)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from honed.cli import main
from honed.quickstart import OUT_OF_DOMAIN_QUESTION, in_domain_probe, resource_path, sample_data_path, tiny_model_path

EVAL_DATA = resource_path("sample_data", "clinical_lab_eval.jsonl")


def test_sample_data_is_the_refusal_mix():
    """The quickstart trains on the add-refusals mix: in-domain answers, near-domain hard negatives,
    clarifying replies and 25% refusals in both languages, every shipped refusal phrasing used."""
    rows = [json.loads(line) for line in sample_data_path().read_text(encoding="utf-8").splitlines()]
    counts = Counter((r["lang"], r["kind"]) for r in rows)
    assert counts == {("en", "in_domain"): 112, ("zh", "in_domain"): 112, ("en", "hard_negative"): 18, ("zh", "hard_negative"): 18,
                      ("en", "clarify"): 4, ("zh", "clarify"): 4, ("en", "refusal"): 45, ("zh", "refusal"): 44}
    refusals = {r["messages"][1]["content"] for r in rows if r["kind"] == "refusal"}
    assert len(refusals) == 12  # varied, not one canned sentence
    assert OUT_OF_DOMAIN_QUESTION not in {r["messages"][0]["content"] for r in rows}
    held_out = {json.loads(line)["messages"][0]["content"] for line in EVAL_DATA.read_text(encoding="utf-8").splitlines()}
    assert not held_out & {r["messages"][0]["content"] for r in rows}


def test_validation_file_rewords_training_questions_and_holds_nothing_else_seen():
    """The quickstart validates on its own file: training questions reworded (the training answer kept),
    and out-of-domain questions that appear in no training, evaluation or pool file."""
    from honed.quickstart import validation_data_path

    train = {r["id"]: r for r in map(json.loads, sample_data_path().read_text(encoding="utf-8").splitlines())}
    rows = [json.loads(line) for line in validation_data_path().read_text(encoding="utf-8").splitlines()]
    assert Counter(r["kind"] for r in rows) == {"in_domain": 16, "hard_negative": 4, "refusal": 6}
    seen = {r["messages"][0]["content"] for r in train.values()}
    seen |= {json.loads(line)["messages"][0]["content"] for line in EVAL_DATA.read_text(encoding="utf-8").splitlines()}
    for pool in ("ood_en.txt", "ood_zh.txt"):
        seen |= {line.split("\t")[-1].strip() for line in resource_path("refusals", pool).read_text(encoding="utf-8").splitlines()}
    assert not seen & {r["messages"][0]["content"] for r in rows}
    for r in rows:
        if "reworded_from" in r:
            assert r["messages"][1]["content"] == train[r["reworded_from"]]["messages"][1]["content"]


@pytest.mark.slow
def test_quickstart_learns_the_domain_and_refuses(tmp_path, capsys, caplog):
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    out = tmp_path / "qs"
    assert main(["quickstart", "--output", str(out)]) == 0
    # The tiny recipe strays from the data-size suggestion on purpose: no warning about it.
    assert [r.getMessage() for r in caplog.records if r.name == "honed.train.defaults"] == []
    shown = capsys.readouterr().out
    assert "✗" not in shown and shown.count("✓") == 2
    assert "(144 steps)" in shown and "(validation, 12 evaluations)" in shown
    for name in ("adapter_model.safetensors", "loss_curve.png", "config.yaml", "run_info.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[-1] < 0.25 * losses[0]
    # Validated on its own file once per epoch (12 epochs), the final weights kept (no best/).
    assert [r["step"] for r in rows if r["kind"] == "eval"] == list(range(12, 145, 12))
    assert not (out / "best").exists()

    # `honed eval` on the held-out set (greedy, 64 new tokens): the numbers the README states.
    report_dir = tmp_path / "report"
    assert main(["eval", "--model", str(out), "--data", str(EVAL_DATA), "--output", str(report_dir), "--max-new-tokens", "64",
                 "--batch-size", "16", "--no-progress"]) == 0
    domain = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))["models"][0]["metrics"]["domain"]
    refused = {split: (row["refused"], row["n"]) for split, row in domain["per_split"].items() if row["n"]}
    assert refused == {"in_domain": (4, 30), "out_of_domain": (16, 20), "hard_negative": (2, 20)}
    # The report's fitting diagnosis reads the validation curve: the tiny recipe memorises (on purpose).
    fitting = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))["fitting"]
    assert fitting["diagnosis"] == "overfitting" and fitting["best_step"] == 144 and fitting["best_checkpoint"] is None

    # The untuned base does not give the trained answer: the adapter did the work.
    question, expected = in_domain_probe()
    prompt = resource_path("sample_data", "system_prompt.txt").read_text(encoding="utf-8").strip()
    base = ChatModel.load(str(tiny_model_path()))
    assert base.reply([Message("system", prompt), Message("user", question)]).text != expected
