"""Data quality: rule filters, exact/near-duplicate removal (MinHash LSH), train/eval overlap, judge scores.

>>> from honed.data import Conversation, Message
>>> c = Conversation([Message("user", "hi there"), Message("assistant", "hello")])
>>> len(filter_conversations([c, c], FilterConfig()).kept)
1
"""

from honed.data.quality.filter import FilterConfig, FilterResult, Removal, filter_conversations
from honed.data.quality.minhash import LSHIndex, MinHasher
from honed.data.quality.rules import detect_language

__all__ = ["FilterConfig", "FilterResult", "LSHIndex", "MinHasher", "Removal", "detect_language", "filter_conversations"]
