"""`zh-words`, the auto gate's Chinese embedder: content words without function words, half of the
similarity from words and half from character n-grams; the built-in general questions as contrast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from honed.errors import ConfigError
from honed.guard.embedders import CharNgramEmbedder, load_embedder
from honed.guard.fit import fit_gate, general_pool_texts
from honed.guard.gate import embedder_name, load_gate
from honed.guard.zh_words import content_features
from honed.quickstart import resource_path


def test_function_words_and_punctuation_are_dropped_and_chinese_words_also_give_their_characters():
    # jieba cuts 空腹/血糖/需要/禁食/多久/？: 需要 and 多久 only say how it is asked
    assert content_features("空腹血糖需要禁食多久？") == ["空腹", "空", "腹", "空腹", "血糖", "血", "糖", "血糖", "禁食", "禁", "食", "禁食"]
    assert content_features("INR是什么？") == ["inr"]  # an English term stays whole: its letters mean nothing alone
    assert content_features("什么？") == []


def test_similarity_is_the_mean_of_the_word_and_character_similarities():
    emb = load_embedder("zh-words")
    assert (emb.name, emb.dim) == ("zh-words:8192", 8192) and embedder_name("zh-words") == "zh-words:8192"
    both = emb.encode(["空腹血糖", "血糖"])
    # words by hand: sqrt counts {空腹: √2, 空, 腹, 血糖: √2, 血, 糖} and {血糖: √2, 血, 糖}: dot 4, norms √8 and 2
    words = 4 / (np.sqrt(8) * 2)
    chars = CharNgramEmbedder(4096).encode(["空腹血糖", "血糖"])
    assert float(both[0] @ both[1]) == pytest.approx(0.5 * (words + float(chars[0] @ chars[1])), abs=1e-6)
    only_function_words = emb.encode(["什么？"])[0]
    assert np.abs(only_function_words[:4096]).sum() == 0 and np.linalg.norm(only_function_words) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="zh-words:101: give an even size"):
        load_embedder("zh-words:101")


def test_one_class_auto_gate_separates_chinese_held_out_questions_better_than_characters_alone(tmp_path, monkeypatch):
    """On the sample domain the character n-gram route reaches AUROC 0.981 for Chinese; zh-words 0.99+."""
    from sklearn.metrics import roc_auc_score

    import honed.guard.gate as gate_module
    from honed.guard.questions import read_questions

    train, held = resource_path("sample_data", "clinical_lab_train.jsonl"), resource_path("sample_data", "clinical_lab_eval.jsonl")
    questions = read_questions(train, "in_domain").texts
    rows = [json.loads(line) for line in held.read_text(encoding="utf-8").splitlines()]
    rows += [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if '"out_of_domain"' in line]
    rows = [r for r in rows if r["lang"] == "zh" and r["kind"] in ("in_domain", "out_of_domain")]
    texts, labels = [r["messages"][0]["content"] for r in rows], [r["kind"] == "in_domain" for r in rows]
    aurocs = {}
    for cjk in ("char-ngram", "zh-words"):
        monkeypatch.setitem(gate_module.AUTO_EMBEDDERS, "cjk", cjk)
        report = fit_gate(questions, tmp_path / cjk)
        assert report.parts[1].embedder == embedder_name(cjk)
        aurocs[cjk] = roc_auc_score(labels, [d.score for d in load_gate(tmp_path / cjk).check_many(texts)])
    assert aurocs["char-ngram"] == pytest.approx(0.981, abs=0.002)
    assert aurocs["zh-words"] >= 0.99


def test_a_gate_fitted_with_character_ngrams_for_chinese_still_loads_with_them(tmp_path, monkeypatch):
    import honed.guard.gate as gate_module

    monkeypatch.setitem(gate_module.AUTO_EMBEDDERS, "cjk", "char-ngram")
    fit_gate(["血糖检测需要空腹吗？", "糖化血红蛋白是什么？", "血常规查什么？", "尿常规怎么留尿？", "肝功能包括哪些？",
              "What is TSH?", "What does HbA1c measure?", "Normal potassium?", "What is ALT?", "What is CRP?"], tmp_path / "old")
    monkeypatch.undo()
    gate = load_gate(tmp_path / "old")
    assert gate.parts["cjk"].embedder.name == "char-ngram:4096"
    assert gate.check("血糖检测需要空腹吗？").route == "cjk"


def test_general_questions_join_the_contrast_examples_minus_excluded_topics(tmp_path):
    pool = [line for name in ("ood_en.txt", "ood_zh.txt")
            for line in resource_path("refusals", name).read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    cooking = [line for line in pool if line.startswith("cooking\t")]
    assert len(general_pool_texts()) == len(pool) == 176 and len(general_pool_texts({"cooking"})) == 176 - len(cooking) == 162
    lab = ["What does HbA1c measure?", "What is a normal TSH level?", "Do I need to fast for a lipid panel?", "What is INR?", "What is ALT?"]
    fit_gate(lab, tmp_path / "g", embedder="char-ngram", general_questions=True, exclude_topics={"cooking"})
    config = json.loads((tmp_path / "g" / "gate.json").read_text(encoding="utf-8"))
    # 162 distinct general questions, 20% (32) held out for the report, 130 indexed as contrast
    assert (config["parts"]["all"]["ood_indexed"], config["parts"]["all"]["ood"]) == (130, 32)
    assert config["general_questions"] == {"excluded_topics": ["cooking"]}
    with pytest.raises(ConfigError, match="--exclude-topic baking: not a built-in topic"):
        fit_gate(lab, tmp_path / "h", embedder="char-ngram", general_questions=True, exclude_topics={"baking"})
    assert not (tmp_path / "h").exists()
