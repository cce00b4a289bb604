"""Calibrated refusal decisions: P(refuse) against a plain per-token loop, the start-of-reply ban on
hand-built sequences, the threshold rule on hand-made scores, the calibration file and its checks,
and the whole path through `ChatModel` on a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from honed.data.conversation import Conversation, Message
from honed.data.tokenize import render_prompt_ids
from honed.errors import DataError, HonedError, OutputExistsError
from honed.guard.refusal_fit import fit_threshold, replies_by_kind
from honed.infer.refusal_calibration import (OpeningBan, RefusalCalibration, RefusalCalibrationError, RefusalOpenings,
                                             refusal_probabilities, tokenizer_fingerprint)

QUESTIONS = ["What does HbA1c measure?", "Who won the World Cup?", "血常规查什么？"]


@pytest.fixture(scope="module")
def bot(tiny_model_dir):
    from honed.infer.generate import ChatModel

    return ChatModel.load(str(tiny_model_dir("qwen2")), device="cpu")


def prompts_of(bot, questions=QUESTIONS):
    return [render_prompt_ids(Conversation([Message("system", "Lab questions only."), Message("user", q)]), bot.tokenizer, bot.template)
            for q in questions]


@torch.no_grad()
def brute_force(bot, prompt: list[int], openings) -> float:
    """Sum over openings of the product of per-token softmax probabilities, one forward per token."""
    total = 0.0
    for opening in openings:
        prob = 1.0
        for t, token in enumerate(opening):
            ids = torch.tensor([prompt + list(opening[:t])])
            logits = bot.model(input_ids=ids).logits[0, -1].double()
            prob *= torch.softmax(logits, -1)[token].item()
        total += prob
    return total


def test_probability_matches_a_plain_loop(bot):
    openings = [(17,), (40, 41), (40, 52, 60), (99, 7, 7, 8)]  # none a prefix of another; different lengths
    prompts = prompts_of(bot)
    got = refusal_probabilities(bot, prompts, openings, batch_size=3)  # batches cut across prompts
    want = [brute_force(bot, p, openings) for p in prompts]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert len(set(round(w, 9) for w in want)) == 3  # the prompts really differ


def test_every_first_token_together_is_certain(bot):
    """The single-token openings of the whole vocabulary partition the replies: P = 1."""
    vocab = bot.model.get_output_embeddings().weight.shape[0]
    got = refusal_probabilities(bot, prompts_of(bot, QUESTIONS[:1]), [(i,) for i in range(vocab)], batch_size=512)
    assert got[0] == pytest.approx(1.0, abs=1e-4)


def test_ban_acts_on_completing_tokens_in_the_first_k_positions_only():
    openings = [(5,), (7, 9), (7, 8, 4)]
    ban = OpeningBan(openings, prompt_width=3, active=[True, False])

    def banned(generated, row=0):
        ids = torch.tensor([[1, 2, 3, *generated]] * 2)
        scores = ban(ids, torch.zeros(2, 12))
        return sorted(torch.nonzero(torch.isinf(scores[row])).flatten().tolist())

    assert banned([]) == [5]  # 7 only starts an opening (an answer may start with it too)
    assert banned([], row=1) == []  # an inactive row (P(refuse) above the threshold) decodes freely
    assert banned([7]) == [9]
    assert banned([7, 8]) == [4]
    assert banned([6]) == []  # a refusal opening later in the reply is left alone
    assert banned([7, 8, 4][:0] + [6, 7]) == []  # (6, 7) is no opening's start
    assert banned([6, 7, 8]) == []  # step 3 >= k = 3: nothing is touched any more


def test_threshold_rule_on_hand_made_scores():
    answer, refuse = [0.0, 0.1, 0.4], [0.3, 0.5, 0.9]
    # Candidates 0.0, 0.05, 0.2, 0.35, 0.45, 0.7, 0.95; J(0.2) = 3/3 - 1/3 = J(0.45) = 2/3 - 0: the lower one.
    assert fit_threshold(answer, refuse) == 0.2
    assert fit_threshold(answer, refuse, max_false_refusal=0.0) == 0.45
    assert fit_threshold(answer, refuse, max_false_refusal=0.34) == 0.2
    assert fit_threshold([0.2, 0.2], [0.8]) == 0.5
    with pytest.raises(DataError):
        fit_threshold([], refuse)
    with pytest.raises(HonedError, match="max_false_refusal"):
        fit_threshold(answer, refuse, max_false_refusal=1.5)


def test_openings_are_the_shortest_prefixes_no_answer_shares(bot):
    tok, tpl = bot.tokenizer, bot.template
    refusals = ["Sorry, I can only help with lab tests.", "I can only answer lab questions.", "Sorry, I can only help with lab tests."]
    answers = ["Sorry for the wait: HbA1c is average glucose.", "I can see why; TSH is a hormone.", "Ferritin stores iron."]
    openings = RefusalOpenings.from_replies(refusals, answers, tok, tpl)
    answer_ids = [tok.encode(a, add_special_tokens=False) for a in answers]
    assert len(openings.ids) == 2 and not openings.dropped
    for refusal in refusals[:2]:
        ids = tok.encode(refusal, add_special_tokens=False)
        opening = next(o for o in openings.ids if ids[: len(o)] == list(o))  # each refusal has its opening
        assert not any(a[: len(opening)] == list(opening) for a in answer_ids)  # no answer opens this way
        assert any(a[: len(opening) - 1] == list(opening[:-1]) for a in answer_ids)  # one token shorter, one does
    assert openings.k == max(len(o) for o in openings.ids)
    # A refusal that opens like an answer for longer than max_tokens is dropped, and named.
    same = RefusalOpenings.from_replies(["Ferritin stores iron, but I cannot say more.", "抱歉，我只能回答检验问题。"], answers, tok, tpl, max_tokens=2)
    assert same.dropped == ["Ferritin stores iron, but I cannot say more."] and len(same.ids) == 1
    with pytest.raises(DataError, match="refusal"):
        RefusalOpenings.from_replies([], answers, tok, tpl)


def test_replies_by_kind_reads_a_refusal_mix(tmp_path):
    mix = tmp_path / "mix.jsonl"
    rows = [("in_domain", "Average glucose."), ("refusal", "Sorry, lab questions only."), ("hard_negative", "Yes, coffee can."),
            ("out_of_domain", "I only answer lab questions."), (None, "TSH is a hormone.")]
    mix.write_text("".join(json.dumps({**({"kind": k} if k else {}), "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]}) + "\n"
                           for k, a in rows))
    assert replies_by_kind([mix]) == (["Sorry, lab questions only.", "I only answer lab questions."],
                                      ["Average glucose.", "Yes, coffee can.", "TSH is a hormone."])


def test_calibration_file_round_trip_and_checks(bot, tiny_tokenizer, tmp_path):
    from honed.data.templates import get_template

    cal = RefusalCalibration([[5], [7, 9]], ["a", "b"], 0.4, tokenizer_fingerprint(bot.tokenizer, bot.template), {"rule": "Youden's J"})
    cal.save(tmp_path / "refusal_calibration.json")
    again = RefusalCalibration.load(tmp_path)  # a folder holding refusal_calibration.json
    assert (again.openings, again.threshold, again.tokenizer_fingerprint, again.fitted["rule"]) == ([[5], [7, 9]], 0.4, cal.tokenizer_fingerprint, "Youden's J")
    assert again.opening_tuples() == [(5,), (7, 9)] and again.k == 2
    assert again.checked_for(bot.tokenizer, bot.template) is again
    with pytest.raises(OutputExistsError):
        cal.save(tmp_path / "refusal_calibration.json")  # never replaced silently
    cal.save(tmp_path / "refusal_calibration.json", overwrite=True)

    other = tiny_tokenizer("llama3")
    with pytest.raises(RefusalCalibrationError, match="another tokenizer"):
        again.checked_for(other, get_template("llama3"))
    with pytest.raises(RefusalCalibrationError, match="no refusal calibration"):
        RefusalCalibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"openings": [], "threshold": 0.5}')
    with pytest.raises(RefusalCalibrationError, match="bad.json: not a refusal calibration"):
        RefusalCalibration.load(tmp_path / "bad.json")


@torch.no_grad()
def test_chat_model_bans_refusal_openings_below_the_threshold_only(bot):
    from honed.infer.generate import GenerationSettings, left_pad

    prompts = prompts_of(bot)
    firsts = [bot.model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts]
    greedy = [int(f.argmax()) for f in firsts]
    openings = sorted({(g,) for g in greedy})
    fingerprint = tokenizer_fingerprint(bot.tokenizer, bot.template)
    ids, mask = left_pad(prompts, bot.tokenizer.pad_token_id)

    def first_tokens(threshold):
        bot.use_refusal_calibration(RefusalCalibration([list(o) for o in openings], ["x"] * len(openings), threshold, fingerprint))
        calibrated, probabilities = bot.refusal_processors(prompts)
        out = bot.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=bot.tokenizer.pad_token_id, **calibrated)
        return out[:, ids.shape[1]].tolist(), probabilities

    plain, probabilities = first_tokens(0.0)  # no P(refuse) is below 0: nothing banned
    assert plain == greedy
    want = [sum(torch.softmax(f.double(), -1)[o[0]].item() for o in openings) for f in firsts]
    assert probabilities == pytest.approx(want, rel=1e-5)
    banned, _ = first_tokens(1.0)  # every P(refuse) is below 1: no reply may open with an opening
    for f, token in zip(firsts, banned):
        allowed = f.clone()
        allowed[[o[0] for o in openings]] = -math.inf
        assert token == int(allowed.argmax())  # the best token that opens no refusal
    middle = sorted(probabilities)[1]
    split, _ = first_tokens(middle)  # rows at or above the threshold keep their greedy opening
    assert [s == g for s, g in zip(split, greedy)] == [p >= middle for p in probabilities]

    replies = bot.generate([Conversation([Message("system", "Lab questions only."), Message("user", q)]) for q in QUESTIONS],
                           GenerationSettings(max_new_tokens=3))
    assert [r.refusal_probability for r in replies] == pytest.approx(probabilities, rel=1e-5)
    bot.use_refusal_calibration(None)
    assert bot.generate([Conversation([Message("user", QUESTIONS[0])])], GenerationSettings(max_new_tokens=2))[0].refusal_probability is None


def test_fit_calibration_scores_the_validation_questions_under_the_scope_prompt(bot, tmp_path):
    from honed.guard.refusal_fit import fit_calibration

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({**({"kind": k} if k else {}), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                           ensure_ascii=False) + "\n" for k, q, a in rows), encoding="utf-8")
        return path

    mix = write("mix.jsonl", [("in_domain", "What is TSH?", "TSH is a pituitary hormone."), ("refusal", "Who won?", "抱歉，我只能回答检验问题。"),
                              ("refusal", "Bake bread?", "Sorry, lab questions only.")])
    val = write("val.jsonl", [("in_domain", QUESTIONS[0], "x"), ("hard_negative", "Coffee before a test?", "x"), ("out_of_domain", QUESTIONS[1], "x"),
                              (None, "unmarked question", "x")])
    cal = fit_calibration(bot, [mix], [val], system_prompt="Lab questions only.")
    openings = cal.opening_tuples()
    assert len(openings) == 2  # one per refusal: neither opens like the answer
    want = {split: [brute_force(bot, p, openings)] for split, p in
            zip(["in_domain", "hard_negative", "out_of_domain"], prompts_of(bot, [QUESTIONS[0], "Coffee before a test?", QUESTIONS[1]]))}
    for split, scores in want.items():
        assert cal.fitted["p_refuse"][split] == pytest.approx(scores, abs=1e-6)
    assert cal.threshold == pytest.approx(fit_threshold(want["in_domain"] + want["hard_negative"], want["out_of_domain"]), abs=1e-5)
    assert cal.fitted["unmarked_validation_records"] == 1
    assert cal.tokenizer_fingerprint == tokenizer_fingerprint(bot.tokenizer, bot.template)
