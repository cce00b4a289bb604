"""Which language a text is in (Chinese or not), word tokens, and answer normalisation.

Chinese has no spaces between words, so every word-based metric (BLEU, ROUGE, METEOR) needs
to know whether to segment first: sacrebleu's `zh` tokenizer for BLEU, jieba for the others.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache
from typing import Literal

from honed.eval.metrics._common import require

Language = Literal["zh", "en"]

# Han ideographs: unified, extension A, compatibility, and the supplementary-plane extensions.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_WORD_RUN = re.compile(r"[^\W_]+")
_ENGLISH_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_SPACE_NEXT_TO_HAN = re.compile(f"(?<=[{_HAN}])\\s+|\\s+(?=[{_HAN}])")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})

CHINESE_THRESHOLD = 0.3


def chinese_share(text: str) -> float:
    """Share of Chinese among the text's units: each Han character is one unit, each run of
    other letters/digits (an English word, a number) is one unit.

    Counting a Latin word as one unit, not as its letters, keeps a Chinese sentence with a few
    English terms ("用 PyTorch 训练模型") Chinese.

    >>> chinese_share("用 PyTorch 训练模型")
    0.8333333333333334
    >>> chinese_share("plain English"), chinese_share("...")
    (0.0, 0.0)
    """
    n_han = len(_HAN_CHAR.findall(text))
    n_other = len(_WORD_RUN.findall(_HAN_CHAR.sub(" ", text)))
    total = n_han + n_other
    return n_han / total if total else 0.0


def detect_language(text: str, threshold: float = CHINESE_THRESHOLD) -> Language:
    """'zh' when at least `threshold` of the text's units are Chinese, else 'en'.

    'en' stands for every space-delimited language: it selects the tokenisation, not a
    dictionary.

    >>> detect_language("模型的学习率是多少？"), detect_language("What is the learning rate?")
    ('zh', 'en')
    """
    return "zh" if chinese_share(text) >= threshold else "en"


def is_chinese(text: str, threshold: float = CHINESE_THRESHOLD) -> bool:
    """True when `detect_language(text)` is 'zh'.

    >>> is_chinese("北京是中国的首都。"), is_chinese("Beijing")
    (True, False)
    """
    return detect_language(text, threshold) == "zh"


def pair_language(*texts: str | None) -> Language:
    """'zh' when any of the texts is Chinese: a Chinese reference with an English answer
    must still be segmented the Chinese way.

    >>> pair_language("The capital is Beijing.", "首都是北京。")
    'zh'
    """
    return "zh" if any(text and is_chinese(text) for text in texts) else "en"


@lru_cache(maxsize=1)
def _jieba():
    jieba = require("jieba")
    jieba.setLogLevel(logging.WARNING)  # it prints "Building prefix dict..." at first use
    return jieba


def segment_chinese(text: str) -> list[str]:
    """jieba words of `text`, without whitespace and punctuation tokens, ASCII lower-cased.

    >>> segment_chinese("我们用LoRA微调模型。")
    ['我们', '用', 'lora', '微调', '模型']
    """
    return [token.lower() for token in _jieba().lcut(text) if _WORD_RUN.search(token)]


def word_tokens(text: str, language: Language | None = None) -> list[str]:
    """Lower-cased word tokens without punctuation: jieba for Chinese, letters/digits runs
    (keeping inner apostrophes and hyphens: "don't", "state-of-the-art") otherwise.

    >>> word_tokens("The model's loss fell, quickly!")
    ['the', "model's", 'loss', 'fell', 'quickly']
    >>> word_tokens("损失下降了")
    ['损失', '下降', '了']
    """
    language = language or detect_language(text)
    if language == "zh":
        return segment_chinese(text)
    return _ENGLISH_WORD.findall(text.translate(_QUOTES).lower())


def normalize_answer(text: str) -> str:
    """Canonical form for exact-match: NFKC (full-width → half-width: "ＡＢＣ１" → "abc1",
    "，" → ","), case-folded, punctuation deleted, whitespace collapsed, and no whitespace
    next to Chinese characters (Chinese does not separate words by spaces).

    >>> normalize_answer("  The  Answer: ４２! ")
    'the answer 42'
    >>> normalize_answer("北京 是 首都。") == normalize_answer("北京是首都")
    True
    """
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    # Punctuation is deleted, not spaced (as in SQuAD's normalisation): "U.S." == "US".
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = " ".join(text.split())
    return _SPACE_NEXT_TO_HAN.sub("", text)
