"""Preference evaluation on a tiny model: log-probs against a direct full-logits computation, the summary, config/CLI keys."""

from __future__ import annotations

import json

import pytest
import torch

from honed.eval.preference import load_eval_pairs, pair_margins, summarise


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "What is TSH?", "chosen": "A pituitary hormone.", "rejected": "Pizza is great."},
            {"prompt": [{"role": "user", "content": "Who won?"}], "chosen": "I only answer lab questions.", "rejected": "Argentina."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_margins_match_direct_log_softmax(tiny_model_dir, pairs_file):
    from honed.infer.generate import ChatModel

    bot = ChatModel.load(str(tiny_model_dir("qwen2")), device="cpu")
    pairs = load_eval_pairs(str(pairs_file), system_prompt="Lab questions only.")
    assert pairs[0].prompt[0].content == "Lab questions only."
    rows, skipped = pair_margins(bot, pairs, batch_size=3)
    assert not skipped and len(rows) == 2
    for pair, (logp_c, logp_r, n_c, n_r) in zip(pairs, rows):
        for conv, want_logp, want_n in ((pair.chosen_conversation(), logp_c, n_c), (pair.rejected_conversation(), logp_r, n_r)):
            prompt_ids = bot.tokenizer(bot.tokenizer.apply_chat_template(conv.to_dict()["messages"][:-1], tokenize=False, add_generation_prompt=True),
                                       add_special_tokens=False)["input_ids"]
            full = bot.tokenizer(bot.tokenizer.apply_chat_template(conv.to_dict()["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = bot.model(torch.tensor([full])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(full[1:])[:, None]).squeeze(1)
            # The answer and its end-of-turn marker are scored (the chat template's trailing newline is not).
            n = want_n
            assert n == len(full) - len(prompt_ids) - 1
            assert want_logp == pytest.approx(float(logp[len(prompt_ids) - 1 : len(prompt_ids) - 1 + n].sum()), abs=1e-4)


def test_summary_numbers():
    rows = [(-2.0, -5.0, 2, 5), (-6.0, -4.0, 6, 2), (-3.0, -3.5, 1, 7)]
    s = summarise(rows, [("f:9", "why")])
    assert s == {"n_pairs": 3, "accuracy": 2 / 3, "mean_margin": pytest.approx((3.0 - 2.0 + 0.5) / 3), "length_normalised_accuracy": 1 / 3,
                 "skipped": 1}


def test_flag_and_config_key(tmp_path, pairs_file):
    import argparse

    from honed.commands import eval as eval_cmd
    from honed.eval.report import flatten_metrics

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", "m", "--data", "d.jsonl", "--preference", str(pairs_file)])
    cfg = eval_cmd.build_config(args)
    assert cfg.preference.path == str(pairs_file)
    flat = flatten_metrics({"preference": {"accuracy": 0.75, "mean_margin": 1.5}})
    assert flat["preference_accuracy"] == 0.75 and flat["preference_margin"] == 1.5
