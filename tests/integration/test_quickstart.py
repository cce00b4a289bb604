"""`honed quickstart` end to end on the shipped tiny model and data (the README's main job)."""

from __future__ import annotations

import json

import pytest

from honed.cli import main
from honed.quickstart import OUT_OF_DOMAIN_QUESTION, in_domain_probe, resource_path, sample_data_path, tiny_model_path


def test_sample_data_is_bilingual_with_refusals():
    rows = [json.loads(line) for line in sample_data_path().read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 250
    kinds = {(r["lang"], r["kind"]) for r in rows}
    assert kinds == {("en", "in_domain"), ("zh", "in_domain"), ("en", "out_of_domain"), ("zh", "out_of_domain")}
    refusals = {r["messages"][1]["content"] for r in rows if r["kind"] == "out_of_domain"}
    assert len(refusals) >= 16  # varied, not one canned sentence
    assert OUT_OF_DOMAIN_QUESTION not in {r["messages"][0]["content"] for r in rows}


@pytest.mark.slow
def test_quickstart_learns_the_domain_and_refuses(tmp_path, capsys):
    from honed.data.conversation import Message
    from honed.infer.generate import ChatModel

    out = tmp_path / "qs"
    assert main(["quickstart", "--output", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "✗" not in shown and shown.count("✓") == 2
    for name in ("adapter_model.safetensors", "loss_curve.png", "config.yaml", "run_info.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.25 * losses[0]

    # The untuned base does not give the trained answer: the adapter did the work.
    question, expected = in_domain_probe()
    prompt = resource_path("sample_data", "system_prompt.txt").read_text(encoding="utf-8").strip()
    base = ChatModel.load(str(tiny_model_path()))
    assert base.reply([Message("system", prompt), Message("user", question)]).text != expected
