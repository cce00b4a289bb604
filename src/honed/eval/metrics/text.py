"""Generation metrics: BLEU and chrF (sacrebleu), ROUGE-1/2/L F1 (rouge-score), exact match
and contains-reference — each Chinese-aware. METEOR lives in `meteor.py`.

Per-sample functions take one prediction and one reference and return a `SampleResult`;
`corpus_*` functions take parallel lists and return an `AggregateResult`. Pairs with an empty
prediction or a missing reference are never scored: they carry an `error` and are counted.

BLEU and chrF are on sacrebleu's 0-100 scale; ROUGE, exact match and contains are in [0, 1].
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from honed.eval.metrics._common import (
    AggregateResult,
    SampleResult,
    aggregate,
    check_lengths,
    pair_error,
    require,
    valid_pairs,
)
from honed.eval.metrics.language import (
    Language,
    normalize_answer,
    pair_language,
    segment_chinese,
)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _bleu_tokenizer(language: Language) -> str:
    # sacrebleu's `zh` tokenizer splits Han characters apart and treats the rest like `13a`.
    return "zh" if language == "zh" else "13a"


def sentence_bleu(prediction: str | None, reference: str | None,
                  language: Language | None = None) -> SampleResult:
    """sacrebleu sentence BLEU (effective n-gram order, exp smoothing) of one pair.

    `language=None` picks the `zh` tokenizer when either text is Chinese, else `13a`.

    >>> round(sentence_bleu("the cat sat on the mat", "the cat sat on the mat").scores["bleu"], 1)
    100.0
    >>> sentence_bleu("", "the cat").error
    'empty prediction'
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    sacrebleu = require("sacrebleu")
    language = language or pair_language(prediction, reference)
    score = sacrebleu.sentence_bleu(prediction, [reference], tokenize=_bleu_tokenizer(language))
    return SampleResult({"bleu": float(score.score)})


def corpus_bleu(predictions: Sequence[str | None], references: Sequence[str | None],
                language: Language | None = None) -> AggregateResult:
    """sacrebleu corpus BLEU over the scorable pairs (one reference per prediction).

    `language=None` picks the `zh` tokenizer when any text is Chinese (on non-Chinese text it
    tokenizes like `13a`), else `13a`. Scores: `bleu` and its `brevity_penalty`.

    >>> r = corpus_bleu(["the cat sat on the mat", None], ["the cat sat on the mat", "a dog"])
    >>> round(r.scores["bleu"], 1), r.n_skipped
    (100.0, 1)
    """
    kept, skipped = valid_pairs(predictions, references)
    if not kept:
        return AggregateResult({}, n_scored=0, skipped=skipped)
    sacrebleu = require("sacrebleu")
    hyps = [predictions[i] for i in kept]
    refs = [references[i] for i in kept]
    language = language or pair_language(*hyps, *refs)
    bleu = sacrebleu.metrics.BLEU(tokenize=_bleu_tokenizer(language))
    score = bleu.corpus_score(hyps, [refs])
    return AggregateResult({"bleu": float(score.score), "brevity_penalty": float(score.bp)},
                           n_scored=len(kept), skipped=skipped)


def _chrf_inputs(texts: list[str], language: Language, word_order: int) -> list[str]:
    # chrF's character n-grams ignore whitespace, so segmenting changes nothing for them;
    # chrF++ word n-grams split on whitespace and need Chinese segmented into words first.
    if language == "zh" and word_order > 0:
        return [" ".join(segment_chinese(text)) for text in texts]
    return texts


def sentence_chrf(prediction: str | None, reference: str | None, word_order: int = 0,
                  language: Language | None = None) -> SampleResult:
    """sacrebleu chrF (word_order=0) or chrF++ (word_order=2) of one pair.

    >>> round(sentence_chrf("北京是首都", "北京是中国的首都").scores["chrf"], 2)
    26.61
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    sacrebleu = require("sacrebleu")
    language = language or pair_language(prediction, reference)
    hyp, ref = _chrf_inputs([prediction, reference], language, word_order)
    score = sacrebleu.metrics.CHRF(word_order=word_order).sentence_score(hyp, [ref])
    return SampleResult({"chrf": float(score.score)})


def corpus_chrf(predictions: Sequence[str | None], references: Sequence[str | None],
                word_order: int = 0, language: Language | None = None) -> AggregateResult:
    """sacrebleu corpus chrF (or chrF++ with word_order=2) over the scorable pairs.

    >>> r = corpus_chrf(["the cat sat", ""], ["the cat sat", "x"])
    >>> round(r.scores["chrf"], 1), r.n_scored, r.skipped
    (100.0, 1, [(1, 'empty prediction')])
    """
    kept, skipped = valid_pairs(predictions, references)
    if not kept:
        return AggregateResult({}, n_scored=0, skipped=skipped)
    sacrebleu = require("sacrebleu")
    hyps = [predictions[i] for i in kept]
    refs = [references[i] for i in kept]
    language = language or pair_language(*hyps, *refs)
    hyps = _chrf_inputs(hyps, language, word_order)
    refs = _chrf_inputs(refs, language, word_order)
    score = sacrebleu.metrics.CHRF(word_order=word_order).corpus_score(hyps, [refs])
    return AggregateResult({"chrf": float(score.score)}, n_scored=len(kept), skipped=skipped)


class _ChineseRougeTokenizer:
    """rouge-score tokenizer for Chinese: its default one keeps only [a-z0-9] and so turns
    Chinese into nothing (every Chinese ROUGE would be 0)."""

    def __init__(self, use_stemmer: bool):
        self._stemmer = None
        if use_stemmer:
            self._stemmer = require("nltk.stem.porter").PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = segment_chinese(text)
        if self._stemmer is None:
            return tokens
        # Same rule as rouge-score: only stem (ASCII) words longer than 3 characters.
        return [self._stemmer.stem(t) if t.isascii() and len(t) > 3 else t for t in tokens]


@lru_cache(maxsize=4)
def _rouge_scorer(language: Language, use_stemmer: bool):
    rouge_scorer = require("rouge_score.rouge_scorer")
    tokenizer = _ChineseRougeTokenizer(use_stemmer) if language == "zh" else None
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer,
                                    tokenizer=tokenizer)


def rouge(prediction: str | None, reference: str | None, use_stemmer: bool = False,
          language: Language | None = None) -> SampleResult:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of one pair (rouge-score).

    Chinese (either text) is segmented by jieba and scored on those words; other text goes
    through rouge-score's default tokenizer unchanged, so English values equal rouge-score's.

    >>> rouge("the cat sat", "the cat sat down").scores["rouge1"]
    0.8571428571428571
    >>> rouge("北京是中国的首都", "中国的首都是北京").scores["rouge1"]
    1.0
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    language = language or pair_language(prediction, reference)
    scores = _rouge_scorer(language, use_stemmer).score(reference, prediction)
    return SampleResult({name: float(scores[name].fmeasure) for name in ROUGE_TYPES})


def corpus_rouge(predictions: Sequence[str | None], references: Sequence[str | None],
                 use_stemmer: bool = False) -> AggregateResult:
    """Mean per-sample ROUGE-1/2/L F1 over the scorable pairs (language detected per pair).

    >>> r = corpus_rouge(["the cat", "a dog"], ["the cat", "the dog"])
    >>> r.scores["rouge1"]
    0.75
    """
    check_lengths(predictions, references)
    return aggregate([rouge(p, r, use_stemmer) for p, r in zip(predictions, references)])


def exact_match(prediction: str | None, reference: str | None) -> SampleResult:
    """1.0 when both texts are equal after `normalize_answer` (case, punctuation, whitespace,
    full-width characters), else 0.0.

    >>> exact_match("  Paris. ", "paris").scores
    {'exact_match': 1.0}
    >>> exact_match("ＬｏＲＡ，秩为８", "LoRA, 秩为 8").scores
    {'exact_match': 1.0}
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    same = normalize_answer(prediction) == normalize_answer(reference)
    return SampleResult({"exact_match": float(same)})


def contains_reference(prediction: str | None, reference: str | None) -> SampleResult:
    """1.0 when the normalised reference occurs inside the normalised prediction.

    >>> contains_reference("The capital of France is Paris.", "paris").scores
    {'contains_reference': 1.0}
    >>> contains_reference("首都是北京。", "北京").scores
    {'contains_reference': 1.0}
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    found = normalize_answer(reference) in normalize_answer(prediction)
    return SampleResult({"contains_reference": float(found)})

