"""METEOR against nltk's implementation (WordNet replaced by a stub, or the packaged WordNet 3.0) and
hand-computed values."""

import itertools
import random

import pytest
from nltk.translate.meteor_score import meteor_score as nltk_meteor

from honed.eval.metrics import SynonymTable, corpus_meteor, meteor, meteor_tokens
from honed.eval.metrics.meteor import align


class _Lemma:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


class _Synset:
    def __init__(self, words):
        self._words = words

    def lemmas(self):
        return [_Lemma(w) for w in self._words]


class StubWordNet:
    """Stands in for nltk.corpus.wordnet (whose data we cannot download): given groups only."""

    def __init__(self, groups=()):
        self.groups = [tuple(g) for g in groups]

    def synsets(self, word):
        return [_Synset(g) for g in self.groups if word in g]


# No word repeats inside a sentence, so the greedy alignment of nltk is the minimal-chunk one.
UNAMBIGUOUS = [
    ("the cat sat on a mat", "a cat was sitting on the mat"),
    ("LoRA trains small adapter matrices quickly", "LoRA quickly trains two small matrices"),
    ("running models needs memory", "the model runs in memory"),
    ("nothing in common", "completely different words"),
    ("perplexity measures how surprised a model is", "perplexity is a measure of model surprise"),
]


@pytest.mark.parametrize("hyp,ref", UNAMBIGUOUS)
def test_equals_nltk_without_synonyms(hyp, ref):
    h, r = hyp.split(), ref.split()
    expected = nltk_meteor([r], h, wordnet=StubWordNet())
    assert meteor_tokens(h, r) == pytest.approx(expected)
    assert meteor(hyp, ref, use_default_synonyms=False).scores["meteor"] == pytest.approx(expected)


def test_stem_stage_matches_like_nltk():
    h, r = "dogs running fast".split(), "the dog runs".split()
    # dogs~dog and running~runs by Porter stem: 2 matches, 1 chunk, P = 2/3, R = 2/3.
    expected = (2 / 3) * (1 - 0.5 * (1 / 2) ** 3)
    assert meteor_tokens(h, r) == pytest.approx(expected)
    assert nltk_meteor([r], h, wordnet=StubWordNet()) == pytest.approx(expected)


def test_synonym_stage_equals_nltk_with_the_same_groups():
    # nltk compares synonyms with the *stemmed* leftovers of its stem stage ("automobil"), so
    # the groups here are words that are their own Porter stem.
    groups = [("start", "begin"), ("car", "auto")]
    hyp, ref = "she will start the old car".split(), "she will begin the auto".split()
    expected = nltk_meteor([ref], hyp, wordnet=StubWordNet(groups))
    got = meteor_tokens(hyp, ref, SynonymTable(groups))
    assert got == pytest.approx(expected)
    assert got > meteor_tokens(hyp, ref)  # the synonyms did something


def test_minimal_chunks_beat_nltks_greedy_alignment():
    # nltk aligns each hypothesis word, last to first, to the LAST free equal reference word:
    # hyp "a b a" vs ref "a b" gives (1,1), (2,0): 2 chunks. METEOR wants the fewest chunks:
    # (0,0), (1,1): 1 chunk.
    hyp, ref = ["a", "b", "a"], ["a", "b"]
    assert align(hyp, ref) == ([(0, 0), (1, 1)], 1)
    precision, recall = 2 / 3, 2 / 2
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)  # = 0.952381
    assert meteor_tokens(hyp, ref) == pytest.approx(fmean * (1 - 0.5 * (1 / 2) ** 3))  # 0.892857
    assert nltk_meteor([ref], hyp, wordnet=StubWordNet()) == pytest.approx(
        fmean * (1 - 0.5 * (2 / 2) ** 3))  # 0.476190


def test_nltk_docstring_example_pinned():
    hyp = ("It is a guide to action which ensures that the military always obeys the commands "
           "of the party").split()
    ref = "It is a guide to action that ensures that the military will forever heed Party commands"
    ref = ref.split()
    # 12 matches (no synonyms). Fewest chunks: [It..action] [that the military] + "ensures" →
    # (0-5), (7-10), (14,15), (17,14) = 4 chunks; nltk's greedy alignment gives 6 (0.6944).
    precision, recall = 12 / 18, 12 / 16
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)  # 0.740741
    expected = fmean * (1 - 0.5 * (4 / 12) ** 3)  # 0.727023
    assert meteor_tokens(hyp, ref) == pytest.approx(expected)
    assert nltk_meteor([ref], hyp, wordnet=StubWordNet()) == pytest.approx(
        fmean * (1 - 0.5 * (6 / 12) ** 3))


def _brute_force(hyp, ref):
    """Best score over every alignment: most matches, then fewest chunks (exact stage only)."""
    best = 0.0
    pairs = [(i, j) for i in range(len(hyp)) for j in range(len(ref)) if hyp[i] == ref[j]]
    best_key = (0, 0)
    for k in range(len(pairs), 0, -1):
        for subset in itertools.combinations(pairs, k):
            if len({i for i, _ in subset}) < k or len({j for _, j in subset}) < k:
                continue
            chunks = 1 + sum(1 for a, b in zip(subset, subset[1:])
                             if not (b[0] == a[0] + 1 and b[1] == a[1] + 1))
            if (k, -chunks) > best_key:
                best_key = (k, -chunks)
        if best_key[0]:
            break
    if best_key[0]:
        k, chunks = best_key[0], -best_key[1]
        p, r = k / len(hyp), k / len(ref)
        best = p * r / (0.9 * p + 0.1 * r) * (1 - 0.5 * (chunks / k) ** 3)
    return best


def test_alignment_is_optimal_and_never_worse_than_nltk_on_random_texts():
    rng = random.Random(0)
    for _ in range(150):
        hyp = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        ref = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        ours = meteor_tokens(hyp, ref)
        assert ours == pytest.approx(_brute_force(hyp, ref)), (hyp, ref)
        assert ours >= nltk_meteor([ref], hyp, wordnet=StubWordNet()) - 1e-12


def test_strings_are_tokenized_and_lower_cased():
    assert meteor("The Cat, sat!", "the cat sat").scores["meteor"] == pytest.approx(
        meteor_tokens(["the", "cat", "sat"], ["the", "cat", "sat"]))


def test_chinese_is_segmented_and_uses_the_cilin_synonyms():
    # jieba: 我们/用/电脑/训练/模型 vs 我们/使用/计算机/训练/模型. 电脑~计算机 (one Cilin group);
    # 4 matches: (0,0) then (2,2),(3,3),(4,4) → 2 chunks. P = R = Fmean = 4/5.
    expected = 0.8 * (1 - 0.5 * (2 / 4) ** 3)  # 0.75
    hyp, ref = "我们用电脑训练模型", "我们使用计算机训练模型"
    assert meteor(hyp, ref).scores["meteor"] == pytest.approx(expected)
    without = meteor(hyp, ref, use_default_synonyms=False)
    assert without.scores["meteor"] == pytest.approx(0.6 * (1 - 0.5 * (2 / 3) ** 3))


def test_user_synonyms_as_dict_or_groups_match_through_stems():
    hyp, ref = "the clinician prescribed it", "the doctor prescribed it"
    base = meteor(hyp, ref, use_default_synonyms=False).scores["meteor"]
    as_dict = meteor(hyp, ref, synonyms={"doctor": ["clinician"]}).scores["meteor"]
    as_groups = meteor(hyp, ref, synonyms=[("clinician", "doctor")]).scores["meteor"]
    assert base < as_dict == as_groups == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    assert SynonymTable({"doctor": ["clinician"]}).are_synonyms("clinicians", "doctors")


def test_corpus_meteor_and_errors():
    result = corpus_meteor(["the cat sat", "", "a b"], ["the cat sat", "x", None])
    assert result.n_scored == 1 and result.skipped == [(1, "empty prediction"),
                                                       (2, "missing reference")]
    assert result.scores["meteor"] == pytest.approx(1 - 0.5 * (1 / 3) ** 3)
    assert meteor("...", "the cat").scores["meteor"] == 0.0
    assert meteor("the cat", "!!!").error == "reference has no words"


# With the real WordNet 3.0 (packaged, offline), against nltk's meteor_score given the same reader.
WORDNET_PAIRS = [
    # start~begin and car~auto are WordNet synonyms: 5 matches, 2 chunks, P = 5/6, R = 1.
    ("he will start the old car", "he will begin the auto", (5 / 6) / 0.85 * (1 - 0.5 * (2 / 5) ** 3)),
    ("the doctor ordered a blood test", "the physician asked for a blood check", None),
    ("the patient feels sick", "the patient is ill", None),
]


@pytest.mark.parametrize("hyp,ref,hand", WORDNET_PAIRS)
def test_equals_nltk_with_the_packaged_wordnet(hyp, ref, hand):
    from honed.data.lexicons import english_wordnet
    from honed.eval.metrics.meteor import default_synonyms

    expected = nltk_meteor([ref.split()], hyp.split(), wordnet=english_wordnet())
    assert meteor(hyp, ref).scores["meteor"] == pytest.approx(expected)
    assert meteor_tokens(hyp.split(), ref.split(), default_synonyms()) > meteor_tokens(hyp.split(), ref.split())
    if hand is not None:
        assert expected == pytest.approx(hand)


def test_wordnet_synonyms_that_nltk_misses_on_its_porter_stems():
    from honed.data.lexicons import english_wordnet

    # nltk looks "larg" (the Porter stem of "large") up in WordNet and finds nothing:
    # 2 matches in 2 chunks → 1/3. Ours matches large~big: 3 matches, 1 chunk, P = R = 1.
    hyp, ref = "a large dose", "a big dose"
    assert nltk_meteor([ref.split()], hyp.split(), wordnet=english_wordnet()) == pytest.approx(1 / 3)
    assert meteor(hyp, ref).scores["meteor"] == pytest.approx(1 - 0.5 * (1 / 3) ** 3)
