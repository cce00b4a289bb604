"""`zh-words`: the gate's embedder for Chinese questions — content words as well as characters.

Character n-grams (`char-ngram`) over a Chinese question are dominated by the characters every
question shares: "去西藏旅游要准备什么？" and "抽血前要准备什么？" have 要, 准备, 什么 and ？ in common, so a
general question written like a lab question scores like one. Here jieba cuts the question into
words, the function words that say *how* something is asked (什么, 怎么, 吗, 需要, 可以, …) are dropped,
and what is left is hashed: each content word, plus its characters and character pairs, so that a
word jieba cuts differently in two questions (血糖 / 血糖值) still matches.

Words alone leave a question made of one unseen term ("INR是什么？") with nothing to match, and those
questions, among the held-out ones, set a 95% threshold very low; so the vector is half words, half
the character n-grams of `char-ngram` (a cosine similarity is the mean of the two). Measured on the
sample domain over five calibration seeds (README, `benchmarks/guard/seeds.py`): fewer Chinese
out-of-domain questions pass than with `char-ngram` alone, and no in-domain one is refused.

The embedder itself, `ChineseWordEmbedder`, is in `honed.guard.embedders` beside the others.

>>> content_features("最近有什么明星绯闻？")[:2]
['明星', '明']
"""

from __future__ import annotations

# Words that carry the form of a question, not its subject: particles, pronouns, question words,
# modal verbs, generic adverbs. Written for honed. Part of the embedder: a change to it or to
# `content_features` needs a new embedder name, or stored indexes would be searched with other vectors.
FUNCTION_WORDS = frozenset(
    "什么 怎么 怎样 如何 为什么 怎么办 吗 呢 吧 啊 呀 么 的 了 是 有 要 会 能 可以 需要 应该 我 你 他 她 它 我们 "
    "一个 一下 哪 哪些 哪个 多少 几 还 都 就 也 和 与 或 在 对 给 把 被 让 请 帮 帮我 最近 现在 一般 比较 好 这 那 "
    "这个 那个 不 没有 多久 多长".split()
)


def content_features(text: str) -> list[str]:
    """The hashed features of one text: each content word, then (Chinese words) its characters and character pairs."""
    from honed.eval.metrics.language import segment_chinese  # jieba, lower-cased, punctuation dropped

    features = []
    for word in segment_chinese(text):
        if word in FUNCTION_WORDS:
            continue
        features.append(word)
        if len(word) > 1 and not word.isascii():  # the letters of an English word carry no meaning
            features += list(word) + [word[i : i + 2] for i in range(len(word) - 1)]
    return features
