"""The label set of a classification recipe: each label key and the words that name it.

A sample's label lives in `meta["label"]` (a key such as "positive" or any of its words such as
"积极"); its answer contains one of the label's words.

>>> ls = LabelSet.from_config({"positive": ["积极", "正面", "positive"], "negative": ["消极", "负面", "negative"]})
>>> ls.key_of("正面"), ls.counterpart("积极", "negative")
('positive', '消极')
"""

from __future__ import annotations

from honed.data.conversation import Conversation
from honed.errors import ConfigError

from honed.data.augment.base import has_cjk, words_pattern


class LabelSet:
    """Label keys → words (synonyms); the first word is the label's usual name."""

    def __init__(self, words: dict[str, list[str]]):
        self.words = words
        self._key = {}
        for key, ws in words.items():
            for w in [key, *ws]:
                self._key.setdefault(w.lower(), key)
        self.pattern = words_pattern(self.all_words())

    @classmethod
    def from_config(cls, cfg, where: str = "labels") -> "LabelSet":
        if not isinstance(cfg, dict) or not cfg:
            raise ConfigError(f"{where}: expected a mapping of label → list of words, "
                              f"e.g. {{positive: [积极, 正面, positive], negative: [消极, negative]}}")
        words: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for key, ws in cfg.items():
            if isinstance(ws, str):
                ws = [ws]
            if not isinstance(ws, list) or not all(isinstance(w, str) and w.strip() for w in ws):
                raise ConfigError(f"{where}.{key}: expected a list of non-empty words, got {ws!r}")
            ws = list(dict.fromkeys([w.strip() for w in ws] or [str(key)]))
            for w in {str(key), *ws}:
                # A word naming two labels would make "which label does this answer carry" undecidable.
                if w.lower() in owner and owner[w.lower()] != key:
                    raise ConfigError(f"{where}.{key}: word {w!r} also names label {owner[w.lower()]!r}")
                owner[w.lower()] = str(key)
            words[str(key)] = ws
        return cls(words)

    def all_words(self) -> list[str]:
        return [w for key, ws in self.words.items() for w in (key, *ws)]

    def key_of(self, word) -> str | None:
        return self._key.get(str(word).lower()) if word is not None else None

    def words_of(self, key: str) -> list[str]:
        return list(dict.fromkeys([*self.words[key], key]))

    def index_in(self, word: str) -> int:
        """Position of `word` among its label's words (the key itself counts as position 0)."""
        key = self.key_of(word)
        lowered = [w.lower() for w in self.words[key]]
        return lowered.index(word.lower()) if word.lower() in lowered else 0

    def counterpart(self, word: str, target: str) -> str:
        """The word of label `target` that plays the part `word` plays in its own label.

        Synonym lists are written in parallel (积极/消极, 正面/负面, positive/negative), so the same
        position keeps language and register; a shorter list falls back to a word of the same script.
        """
        if word.lower() == self.key_of(word).lower() and word not in self.words[self.key_of(word)]:
            return target
        i = self.index_in(word)
        cands = self.words[target]
        if i < len(cands) and has_cjk(cands[i]) == has_cjk(word):
            return cands[i]
        same = [w for w in cands if has_cjk(w) == has_cjk(word)]
        return (same or cands)[0]

    def label_of(self, sample: Conversation) -> tuple[str | None, object]:
        """(label key, raw meta value) of a sample; key is None when absent or not in the set."""
        raw = sample.meta.get("label")
        return self.key_of(raw), raw

    def meta_value(self, raw, target: str) -> str:
        """What to store in meta["label"] for `target`, in the same form as `raw` (key or word)."""
        if raw is None or str(raw) in self.words:
            return target
        return self.counterpart(str(raw), target)
