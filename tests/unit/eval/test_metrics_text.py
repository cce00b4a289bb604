"""BLEU, chrF, ROUGE, exact match and contains against sacrebleu and rouge-score."""

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from honed.eval.metrics import (
    contains_reference,
    corpus_bleu,
    corpus_chrf,
    corpus_rouge,
    exact_match,
    rouge,
    sentence_bleu,
    sentence_chrf,
)

EN_HYPS = [
    "The cat is sitting on the mat today.",
    "LoRA adds low-rank matrices to the attention projections.",
    "Perplexity is the exponential of the mean loss.",
]
EN_REFS = [
    "The cat sat on the mat.",
    "LoRA adds trainable low-rank matrices to frozen projections.",
    "Perplexity is exp of the average cross-entropy loss.",
]
ZH_HYPS = [
    "北京是中国的首都，也是文化中心。",
    "我们使用低秩矩阵微调大模型。",
    "学习率太大会导致损失发散。",
]
ZH_REFS = [
    "中国的首都是北京。",
    "我们用低秩适配器来微调大语言模型。",
    "学习率过大会使训练损失发散。",
]


def test_sentence_bleu_english_by_hand():
    # 13a tokens; clipped n-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths (BP = 1):
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** (1/4)
    got = sentence_bleu("the cat sat on the mat", "the cat sat on a mat").scores["bleu"]
    assert got == pytest.approx(100 * (1 / 12) ** 0.25)
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat").scores["bleu"] == pytest.approx(100.0)


def test_sentence_bleu_chinese_by_hand_is_character_based():
    # zh tokens are characters: 我喜欢苹果 (5) vs 我喜欢吃苹果 (6). Matches 5/5, 3/4, 1/3, 0/2; sacrebleu's
    # exp smoothing makes the zero 4-gram count 1/(2*2); BP = exp(1 - 6/5).
    # BLEU = exp(-0.2) * (1 * 3/4 * 1/3 * 1/4) ** (1/4) = exp(-0.2) / 2. Whitespace (13a) tokens
    # would see one "word" each side and score 0.
    got = sentence_bleu("我喜欢苹果", "我喜欢吃苹果").scores["bleu"]
    assert got == pytest.approx(100 * math.exp(-0.2) / 2)


def test_corpus_bleu_equals_sacrebleu_in_both_languages():
    en = corpus_bleu(EN_HYPS, EN_REFS)
    assert en.scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(EN_HYPS, [EN_REFS]).score)
    zh = corpus_bleu(ZH_HYPS, ZH_REFS)
    expected = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh")
    assert zh.scores["bleu"] == pytest.approx(expected.score)
    assert zh.scores["brevity_penalty"] == pytest.approx(expected.bp)
    assert (en.n_scored, en.n_skipped, zh.n_skipped) == (3, 0, 0)


def test_corpus_bleu_skips_and_counts_unscorable_pairs():
    hyps = [EN_HYPS[0], "", EN_HYPS[1], EN_HYPS[2]]
    refs = [EN_REFS[0], EN_REFS[1], None, EN_REFS[2]]
    result = corpus_bleu(hyps, refs)
    expected = sacrebleu.corpus_bleu([EN_HYPS[0], EN_HYPS[2]], [[EN_REFS[0], EN_REFS[2]]]).score
    assert result.scores["bleu"] == pytest.approx(expected)
    assert result.n_scored == 2
    assert result.skipped == [(1, "empty prediction"), (2, "missing reference")]
    assert result.skipped_by_reason() == {"empty prediction": 1, "missing reference": 1}


def test_corpus_functions_with_nothing_scorable_return_empty_scores():
    result = corpus_bleu([None, "  "], ["a", "b"])
    assert result.scores == {} and result.n_scored == 0 and result.n_skipped == 2


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_rouge(["a", "b"], ["a"])


def test_chrf_equals_sacrebleu_sentence_and_corpus():
    for hyp, ref in zip(EN_HYPS + ZH_HYPS, EN_REFS + ZH_REFS):
        expected = sacrebleu.sentence_chrf(hyp, [ref]).score
        assert sentence_chrf(hyp, ref).scores["chrf"] == pytest.approx(expected)
    expected = sacrebleu.corpus_chrf(ZH_HYPS, [ZH_REFS]).score
    assert corpus_chrf(ZH_HYPS, ZH_REFS).scores["chrf"] == pytest.approx(expected)


def test_chrf_plus_plus_segments_chinese_words():
    chrfpp = sacrebleu.metrics.CHRF(word_order=2)
    # The words, segmented by hand: chrF++'s word n-grams need them, Chinese has no spaces.
    expected = chrfpp.corpus_score(["我 喜欢 苹果"], [["我 喜欢 吃 苹果"]]).score
    unsegmented = chrfpp.corpus_score(["我喜欢苹果"], [["我喜欢吃苹果"]]).score
    assert expected != pytest.approx(unsegmented)
    assert corpus_chrf(["我喜欢苹果"], ["我喜欢吃苹果"], word_order=2).scores["chrf"] == pytest.approx(expected)
    en = chrfpp.sentence_score(EN_HYPS[0], [EN_REFS[0]]).score
    assert sentence_chrf(EN_HYPS[0], EN_REFS[0], word_order=2).scores["chrf"] == pytest.approx(en)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_english_equals_rouge_score(use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    for hyp, ref in zip(EN_HYPS, EN_REFS):
        expected = scorer.score(ref, hyp)
        got = rouge(hyp, ref, use_stemmer=use_stemmer).scores
        assert set(got) == {"rouge1", "rouge2", "rougeL"}
        for name in got:
            assert got[name] == pytest.approx(expected[name].fmeasure)
    assert rouge(EN_HYPS[0], EN_REFS[0]).scores["rouge2"] > 0


def test_rouge_chinese_is_word_segmented():
    plain = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    # rouge-score alone drops every non-ASCII character: Chinese always scores 0.
    assert all(plain.score(ref, hyp)["rouge1"].fmeasure == 0.0 for hyp, ref in zip(ZH_HYPS, ZH_REFS))
    # By hand: [我, 喜欢, 苹果] vs [我, 喜欢, 吃, 苹果]. ROUGE-1: 3 common → F = 6/7; ROUGE-2: 1 common
    # bigram of 2 and 3 → P 1/2, R 1/3, F 0.4; ROUGE-L: LCS 3 → 6/7.
    got = rouge("我喜欢苹果", "我喜欢吃苹果").scores
    assert got == pytest.approx({"rouge1": 6 / 7, "rouge2": 0.4, "rougeL": 6 / 7})
    # Punctuation is not a word: the same scores with a full stop on one side.
    assert rouge("我喜欢苹果。", "我喜欢吃苹果").scores == pytest.approx(got)


def test_rouge_mixed_english_terms_in_chinese_keep_the_english_words():
    got = rouge("用LoRA微调Qwen", "使用 LoRA 微调 Qwen 模型").scores["rouge1"]
    # words: [用, lora, 微调, qwen] vs [使用, lora, 微调, qwen, 模型]: 3 common → F1 = 6/9
    assert got == pytest.approx(2 * 3 / (4 + 5))


def test_corpus_rouge_is_the_mean_of_scorable_samples():
    result = corpus_rouge(EN_HYPS + [""], EN_REFS + ["x"])
    expected = sum(rouge(h, r).scores["rougeL"] for h, r in zip(EN_HYPS, EN_REFS)) / 3
    assert result.scores["rougeL"] == pytest.approx(expected)
    assert result.n_scored == 3 and result.skipped == [(3, "empty prediction")]


@pytest.mark.parametrize("prediction,reference,expected", [
    ("  Paris. ", "paris", 1.0),
    ("The answer is: 42!", "the answer is 42", 1.0),
    ("Paris", "Parish", 0.0),
    ("ＡＢＣ １２３", "abc 123", 1.0),           # full-width letters, digits and space
    ("北京 是 首都。", "北京是首都", 1.0),        # no spaces in Chinese
    ("答案：４２", "答案:42", 1.0),              # full-width colon and digits
    ("上海", "北京", 0.0),
    ("U.S.", "US", 1.0),
])
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference).scores == {"exact_match": expected}


@pytest.mark.parametrize("prediction,reference,expected", [
    ("The capital of France is Paris.", "paris", 1.0),
    ("The capital of France is Lyon.", "paris", 0.0),
    ("首都是北京。", "北京", 1.0),
    ("首都是上海。", "北京", 0.0),
    ("Use ＬｏＲＡ rank 8", "lora rank 8", 1.0),
])
def test_contains_reference(prediction, reference, expected):
    assert contains_reference(prediction, reference).scores == {"contains_reference": expected}


@pytest.mark.parametrize("metric", [sentence_bleu, sentence_chrf, rouge, exact_match,
                                    contains_reference])
def test_per_sample_functions_report_errors_instead_of_raising(metric):
    assert metric("", "reference").error == "empty prediction"
    assert metric(None, "reference").error == "empty prediction"
    assert metric("prediction", None).error == "missing reference"
    assert metric("prediction", "   ").error == "missing reference"
    assert not metric("", "reference").ok and metric("", "reference").scores == {}
