"""`honed eval --guard`: a gate in front of the model, and near-domain questions that belong
(`hard_negative`) counted as a split of their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from honed.data.conversation import Conversation, Message
from honed.eval.runner import apply_gate
from honed.eval.samples import EvalSample
from honed.eval.scoring import Scorer, score_model


class StubGate:
    """Refuses the questions it is told to (the real Gate's `check_many` contract)."""

    def __init__(self, refuse: set[str]):
        self.refuse = refuse

    def check_many(self, texts):
        return [SimpleNamespace(in_domain=t not in self.refuse) for t in texts]


def _sample(i, prompt, split):
    return EvalSample(i, f"s{i}", f"x:{i}", Conversation([Message("user", prompt)]), "ref", split)


def test_the_gate_refuses_in_front_and_the_model_decides_the_rest():
    samples = [_sample(0, "What is TSH?", "in_domain"), _sample(1, "Bake a cake?", "out_of_domain"),
               _sample(2, "Write a poem.", "out_of_domain"), _sample(3, "Coffee before a glucose test?", "hard_negative"),
               _sample(4, "Does a sauna change creatinine?", "hard_negative")]
    assert apply_gate(StubGate({"Bake a cake?", "Coffee before a glucose test?"}), samples) == 2
    assert [s.gate_decision for s in samples] == [None, "refuse", None, "refuse", None]
    # The model answers everything; sample 2 it refuses by itself; 4 it answers.
    answers = ["TSH is a pituitary hormone.", "Mix flour and eggs.", "I can only help with lab tests.",
               "Coffee can raise glucose.", "Yes, dehydration raises it."]
    domain = score_model(samples, answers, Scorer()).domain
    split = domain["per_split"]
    assert (split["out_of_domain"]["refused"], split["out_of_domain"]["n"]) == (2, 2)  # one by the gate, one by the model
    assert (split["hard_negative"]["refused"], split["hard_negative"]["n"]) == (1, 2)  # the gate's false refusal
    assert split["in_domain"]["refused_rate"] == 0.0 and domain["false_refusal_rate"] == 0.0
    # Hard negatives have real answers as references: they count in the generation metrics too.
    assert score_model(samples, answers, Scorer()).generation_counts["n"] == 3


def test_eval_cli_loads_the_gate_and_names_a_missing_one(tmp_path, capsys):
    from honed.cli import main

    data = tmp_path / "e.jsonl"
    data.write_text('{"prompt": "q", "reference": "a", "kind": "in_domain"}\n', encoding="utf-8")
    code = main(["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--guard", str(tmp_path / "no-gate"), "--output", str(tmp_path / "r")])
    assert code == 2 and "no-gate" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
