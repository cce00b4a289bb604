"""Diversity of generated answers: distinct-n and self-BLEU.

A fine-tune that has collapsed onto a few stock sentences scores well on a judge that looks at
one answer at a time; across answers it shows as few distinct n-grams and a high self-BLEU.

- distinct-n: unique n-grams / all n-grams over every answer's word tokens (counted here: it is
  one line of counting, no library needed). Higher = more varied.
- self-BLEU: mean sentence BLEU (sacrebleu, 0-1) of each answer against all the others as
  references. Lower = more varied.

>>> round(distinct_n(["a b c", "a b d"], 1), 4), distinct_n(["a b c", "a b d"], 2)
(0.6667, 0.75)
"""

from __future__ import annotations

from typing import Sequence

from honed.eval.metrics.language import pair_language, word_tokens


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams / total n-grams over all `texts` (None when there are no n-grams)."""
    seen, total = set(), 0
    for text in texts:
        tokens = word_tokens(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def self_bleu(texts: Sequence[str], max_texts: int = 200) -> float | None:
    """Mean sentence BLEU (0-1, sacrebleu's sentence defaults: exp smoothing, effective order) of
    each text against all the others; the first `max_texts` only. None with fewer than two texts.

    Calling sacrebleu.sentence_bleu per text re-reads every other text each time (n² n-gram
    extractions: ~20 s for 200 answers); here each text's n-grams are extracted once with
    sacrebleu's own tokenizer and n-gram helper, the clipping counts "max over the others" come
    from each n-gram's two largest counts, and sacrebleu's `BLEU.compute_bleu` gives the score.
    """
    from sacrebleu.metrics.bleu import BLEU, MAX_NGRAM_ORDER
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    chosen = [t for t in texts if t and t.strip()][:max_texts]
    if len(chosen) < 2:
        return None
    if pair_language(*chosen) == "zh":
        from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh as Tokenizer
    else:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a as Tokenizer
    tokenize = Tokenizer()
    order = MAX_NGRAM_ORDER
    grams, lengths = zip(*(extract_all_word_ngrams(tokenize(t.rstrip()), 1, order) for t in chosen))
    # For each n-gram: (largest count, index of the text holding it, second-largest count).
    top: dict = {}
    for i, counter in enumerate(grams):
        for gram, count in counter.items():
            first, owner, second = top.get(gram, (0, -1, 0))
            top[gram] = (count, i, first) if count > first else (first, owner, max(second, count))
    scores = []
    for i, counter in enumerate(grams):
        correct, total = [0] * order, [0] * order
        for gram, count in counter.items():
            first, owner, second = top[gram]
            best_other = second if owner == i else first
            correct[len(gram) - 1] += min(count, best_other)
            total[len(gram) - 1] += count
        other_lengths = lengths[:i] + lengths[i + 1 :]
        hyp_len = lengths[i]
        ref_len = min(other_lengths, key=lambda n: (abs(hyp_len - n), n))  # closest, shorter on a tie (as sacrebleu)
        scores.append(BLEU.compute_bleu(correct, total, hyp_len, ref_len, smooth_method="exp", effective_order=True).score / 100.0)
    return sum(scores) / len(scores)


def diversity_metrics(texts: Sequence[str], max_texts: int = 200) -> dict:
    """distinct-1, distinct-2 and self-BLEU of the non-empty `texts`, with the count used."""
    kept = [t for t in texts if t and t.strip()]
    return {"distinct_1": distinct_n(kept, 1), "distinct_2": distinct_n(kept, 2),
            "self_bleu": self_bleu(kept, max_texts), "n_answers": len(kept), "n_empty": len(texts) - len(kept)}
