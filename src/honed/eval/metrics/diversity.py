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
    """Mean sentence BLEU (0-1) of each text against the others; the first `max_texts` only
    (the cost grows with the square of the count). None with fewer than two texts."""
    import sacrebleu

    chosen = [t for t in texts if t and t.strip()][:max_texts]
    if len(chosen) < 2:
        return None
    tokenize = "zh" if pair_language(*chosen) == "zh" else "13a"
    scores = []
    for i, hyp in enumerate(chosen):
        others = chosen[:i] + chosen[i + 1 :]
        scores.append(sacrebleu.sentence_bleu(hyp, others, tokenize=tokenize).score / 100.0)
    return sum(scores) / len(scores)


def diversity_metrics(texts: Sequence[str], max_texts: int = 200) -> dict:
    """distinct-1, distinct-2 and self-BLEU of the non-empty `texts`, with the count used."""
    kept = [t for t in texts if t and t.strip()]
    return {"distinct_1": distinct_n(kept, 1), "distinct_2": distinct_n(kept, 2),
            "self_bleu": self_bleu(kept, max_texts), "n_answers": len(kept), "n_empty": len(texts) - len(kept)}
