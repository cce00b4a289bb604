"""distinct-n (hand counts) and self-BLEU (against sacrebleu directly)."""

from __future__ import annotations

import pytest
import sacrebleu

from honed.eval.metrics.diversity import distinct_n, diversity_metrics, self_bleu


def test_distinct_n_hand_counts():
    texts = ["the cat sat", "the cat ran", "a dog"]
    assert distinct_n(texts, 1) == pytest.approx(6 / 8)   # the, cat, sat, ran, a, dog of 8 tokens
    assert distinct_n(texts, 2) == pytest.approx(4 / 5)   # (the cat) repeats
    assert distinct_n(["one"], 2) is None


def test_distinct_n_segments_chinese():
    assert distinct_n(["血常规检查", "血常规检查"], 1) == pytest.approx(0.5)


def test_self_bleu_against_sacrebleu():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "dogs bark loudly at night"]
    expected = sum(sacrebleu.sentence_bleu(t, [o for o in texts if o is not t]).score for t in texts) / 300
    assert self_bleu(texts) == pytest.approx(expected)
    assert self_bleu(["same answer here", "same answer here"]) == pytest.approx(1.0)
    assert self_bleu(["only one"]) is None


def test_self_bleu_matches_sacrebleu_on_varied_lengths_repeats_and_chinese():
    words = ["blood", "test", "glucose", "level", "normal", "high", "low", "the", "is"]
    texts = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(1 + i % 13)) for i in range(40)]
    texts += [texts[3], texts[3]]  # exact repeats: the clipping count must come from another text
    expected = sum(sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)) / len(texts) / 100
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-12)
    zh = ["血常规检查红细胞和白细胞", "血常规检查血小板", "肝功能检查ALT", "这是什么？ 血糖"]
    expected = sum(sacrebleu.sentence_bleu(t, zh[:i] + zh[i + 1:], tokenize="zh").score for i, t in enumerate(zh)) / 400
    assert self_bleu(zh) == pytest.approx(expected, abs=1e-12)


def test_diversity_metrics_counts_empty_answers():
    m = diversity_metrics(["a b", "", "c d"])
    assert m["n_answers"] == 2 and m["n_empty"] == 1 and m["distinct_1"] == 1.0
