"""`honed data add-refusals`: counts at a ratio, refusal language, hard negatives, warnings, files."""

from __future__ import annotations

import json

import pytest

from honed.cli import main
from honed.data.conversation import Conversation, Message
from honed.data.refusals import (
    PoolQuestion,
    build_refusal_mix,
    builtin_pool,
    builtin_refusals,
    language_of,
)
from honed.eval.metrics.refusal import default_detector


def qa(n_en: int, n_zh: int = 0) -> list[Conversation]:
    en = [Conversation([Message("user", f"What does test number {i} measure?"), Message("assistant", "A blood marker.")])
          for i in range(n_en)]
    zh = [Conversation([Message("user", f"第{i}项检验查什么？"), Message("assistant", "一种血液指标。")]) for i in range(n_zh)]
    return en + zh


def hard(n: int) -> list[Conversation]:
    return [Conversation([Message("user", f"Does coffee number {i} change my glucose?"), Message("assistant", "It can.")],
                         source=f"hn.jsonl:{i + 1}") for i in range(n)]


def refusals_of(mix, lang=None):
    return [c for c in mix.conversations if c.meta["kind"] == "refusal" and (lang is None or c.meta["lang"] == lang)]


def test_refusal_count_follows_the_ratio_and_the_languages_of_the_data():
    # 20 en + 20 zh in-domain, 4 hard negatives: 44 others; 0.2 share → 0.2 * 44 / 0.8 = 11 refusals,
    # split 22:22 (hard negatives are English: 24 en, 20 zh) → 6 en, 5 zh.
    mix = build_refusal_mix(qa(20, 20), ratio=0.2, hard_negatives=hard(4), seed=1)
    assert (mix.count("in_domain"), mix.count("hard_negative"), mix.count("refusal")) == (40, 4, 11)
    assert (len(refusals_of(mix, "en")), len(refusals_of(mix, "zh"))) == (6, 5)
    assert mix.refusal_share == 11 / 55


def test_each_refusal_is_in_the_language_of_its_question():
    mix = build_refusal_mix(qa(30, 30), ratio=0.25, seed=2)
    phrasings = builtin_refusals()
    for conv in refusals_of(mix):
        question, answer = conv.messages[0].content, conv.messages[1].content
        assert language_of(question) == conv.meta["lang"]
        assert answer in phrasings[conv.meta["lang"]]
    # phrasings are spread, not one canned sentence
    assert len({c.messages[1].content for c in refusals_of(mix, "en")}) == len(phrasings["en"])


def test_user_phrasings_replace_the_builtin_ones_for_their_language_only():
    mine = "Sorry, I can't help with that: I only discuss lab tests."
    mix = build_refusal_mix(qa(10, 10), ratio=0.3, refusals={"en": [mine], "zh": []}, seed=0)
    assert {c.messages[1].content for c in refusals_of(mix, "en")} == {mine}
    assert {c.messages[1].content for c in refusals_of(mix, "zh")} <= set(builtin_refusals()["zh"])


def test_forced_language_and_user_pool_first():
    pool = [PoolQuestion(f"你喜欢第{i}种颜色吗？", "zh", source="mine.txt") for i in range(3)]
    mix = build_refusal_mix(qa(12, 12), ratio=0.2, ood_pool=pool, language="zh", seed=0)
    zh = refusals_of(mix, "zh")
    assert len(refusals_of(mix)) == len(zh) == 6
    asked = {c.messages[0].content for c in zh}
    assert {q.text for q in pool} <= asked  # the user's 3 questions, then 3 from the built-in pool
    assert sum(c.source.startswith("mine.txt") for c in zh) == 3


def test_existing_refusals_count_and_duplicates_are_skipped_and_reported():
    data = qa(16)
    old = Conversation([Message("user", "Who won the cup?"), Message("assistant", "I can only help with lab tests.")],
                       meta={"kind": "out_of_domain"})
    pool = [PoolQuestion(data[0].messages[0].content, "en", source="pool.txt")]  # an in-domain question
    mix = build_refusal_mix([*data, old], ratio=0.2, ood_pool=pool, use_builtin_pool=False, seed=0)
    # wanted = round(0.2 * 16 / 0.8) = 4, one exists; the only pool question is a duplicate.
    assert mix.count("refusal") == 1 and old.meta["kind"] == "out_of_domain"
    assert [why.split(":")[0] for _, why in mix.skipped] == ["out-of-domain question already in the data"]
    assert any("only 0 en out-of-domain questions available for the 3 en refusals" in w for w in mix.warnings)


def test_warnings_for_over_refusal_and_missing_hard_negatives():
    risky = build_refusal_mix(qa(20), ratio=0.3, seed=0)
    assert any(w.startswith("refusals are 31% of the samples") for w in risky.warnings)  # 9 of 29
    assert any("no hard negatives" in w for w in risky.warnings)
    safe = build_refusal_mix(qa(20), ratio=0.15, hard_negatives=hard(3), seed=0)
    assert safe.warnings == []
    vague = [Conversation([Message("user", "Is it normal?"), Message("assistant", "It depends.")], source="amb:1")]
    mix = build_refusal_mix(qa(20), ratio=0.1, hard_negatives=hard(2), ambiguous=vague, seed=0)
    assert mix.count("clarify") == 1
    assert mix.warnings == ["1 clarifying replies ask no question (first: amb:1); a clarifying reply should ask what the user means"]


def test_excluded_topic_and_system_prompt():
    mix = build_refusal_mix(qa(40, 40), ratio=0.4, exclude_topics={"cooking"}, system_prompt="Lab questions only.", seed=0)
    assert all(c.meta.get("topic") != "cooking" for c in refusals_of(mix))
    assert all(c.messages[0] == Message("system", "Lab questions only.") for c in mix.conversations)


def test_builtin_pool_and_phrasings():
    pool = builtin_pool()
    for lang in ("en", "zh"):
        mine = [q.text for q in pool if q.lang == lang]
        assert len(mine) >= 80 and len(set(mine)) == len(mine)
        assert all(language_of(q) == lang for q in mine)
    detector = default_detector()  # `honed eval` must count every built-in refusal as a refusal
    assert all(detector.is_refusal(text) for texts in builtin_refusals().values() for text in texts)
    assert all(not detector.is_refusal(q.text) for q in pool)


def test_bad_ratio_and_unanswered_hard_negative():
    from honed.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="--ratio 1.2"):
        build_refusal_mix(qa(3), ratio=1.2)
    bare = [Conversation([Message("user", "Does coffee matter?")], source="hn.jsonl:7")]
    with pytest.raises(DataError, match="hn.jsonl:7: hard-negative records need"):
        build_refusal_mix(qa(3), hard_negatives=bare)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_writes_tagged_records_and_never_overwrites(tmp_path, capsys):
    src = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is marker {i}?"},
                                              {"role": "assistant", "content": "A protein."}]} for i in range(17)])
    hn = write_jsonl(tmp_path / "hn.jsonl", [{"messages": [{"role": "user", "content": "Does a marathon raise CK?"},
                                              {"role": "assistant", "content": "Yes, for a day or two."}]}])
    out = tmp_path / "mix.jsonl"
    args = ["data", "add-refusals", "--in", str(src), "--out", str(out), "--ratio", "0.1", "--hard-negatives", str(hn),
            "--refusal", "Nope, not my thing.", "--system-prompt", "Lab only."]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "would not recognise this refusal: 'Nope, not my thing.'" in shown
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["kind"] for r in rows] == ["in_domain"] * 17 + ["hard_negative"] + ["refusal"] * 2
    assert rows[0]["id"] == "q0" and rows[-1]["messages"][-1]["content"] == "Nope, not my thing."
    assert all(r["messages"][0] == {"role": "system", "content": "Lab only."} for r in rows)
    before = out.read_text(encoding="utf-8")
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and out.read_text(encoding="utf-8") == before
    assert main([*args, "--overwrite", "--ratio", "0.3"]) == 0


def test_cli_topics(capsys):
    assert main(["data", "add-refusals", "--in", "x", "--out", "y", "--list-topics"]) == 0
    assert "cooking" in capsys.readouterr().out
    assert main(["data", "add-refusals", "--in", "x", "--out", "y", "--exclude-topic", "clinical"]) == 2
    assert "--exclude-topic clinical: not a built-in topic" in capsys.readouterr().err


def test_the_shipped_sample_mix_is_what_add_refusals_builds(tmp_path):
    from honed.data.refusals import add_refusals
    from honed.quickstart import resource_path

    d = resource_path("sample_data")
    mix = add_refusals(d / "clinical_lab_qa.jsonl", tmp_path / "mix.jsonl", ood_pool_path=d / "ood_questions.txt",
                       refusals_path=d / "refusals.txt", hard_negatives_path=d / "hard_negatives.jsonl",
                       ambiguous_path=d / "ambiguous.jsonl", ratio=0.25, seed=0)
    assert (mix.count("in_domain"), mix.count("hard_negative"), mix.count("clarify"), mix.count("refusal")) == (224, 36, 8, 89)
    # 25% is over the over-refusal line, and the quickstart model does over-refuse (4 of 30 held-out
    # in-domain questions): the warning stays true for the shipped mix too.
    assert [w.split(":")[0] for w in mix.warnings] == ["refusals are 25% of the samples (more than 20%)"]
    assert (tmp_path / "mix.jsonl").read_text(encoding="utf-8") == (d / "clinical_lab_train_mix.jsonl").read_text(encoding="utf-8")


def test_eval_reads_the_kinds_add_refusals_writes(tmp_path):
    from honed.eval.config import EvalData
    from honed.eval.samples import load_samples

    rows = [{"prompt": "q", "reference": "a", "kind": k} for k in ("in_domain", "hard_negative", "clarify", "refusal")]
    samples = load_samples(EvalData(path=str(write_jsonl(tmp_path / "e.jsonl", rows))))
    assert [s.split for s in samples] == ["in_domain", "hard_negative", "in_domain", "out_of_domain"]
