"""Quality filtering: the planted duplicates are found (and only they), rules, overlap, judge, report."""

from __future__ import annotations

import json

import pytest

from honed.data import Conversation, Message
from honed.data.quality import FilterConfig, LSHIndex, detect_language, filter_conversations
from honed.errors import ConfigError

DISTINCT = [
    "What does HbA1c measure in a routine diabetes check?", "How long should I fast before a lipid panel?",
    "Which hormone does the thyroid-stimulating test look at?", "What can a high ALT level point to?",
    "Why is CRP ordered after surgery?", "What is a normal fasting glucose for adults?",
    "How is ferritin related to iron stores?", "Does exercise change creatine kinase results?",
    "What is the difference between serum and plasma?", "When is a urine culture needed?",
    "血常规主要检查哪些指标？", "空腹血糖正常范围是多少？", "肝功能检查前需要空腹吗？", "甲状腺功能五项包括什么？",
    "What does a D-dimer test rule out?", "How often should INR be checked on warfarin?",
    "What is eGFR and how is it calculated?", "Can dehydration raise hemoglobin?",
    "What does the troponin test detect?", "Is vitamin D testing useful in winter?",
    # Same template, different content: must NOT count as duplicates.
    "What is TSH?", "What is ALT?", "What is CRP?", "What is INR?",
]
# (index of the original, near-duplicate text): one word or punctuation changed.
NEAR = [(0, "What does HbA1c measure in a routine diabetes checkup?"),
        (1, "How long should I fast before a lipid panel test?"),
        (5, "What is a normal fasting glucose level for adults?"),
        (10, "血常规主要检查哪些指标呢？"),
        (16, "What is eGFR and how is it usually calculated?")]


def conv(q: str, a: str = "An answer from the lab handbook.", i: int = 0, **meta) -> Conversation:
    return Conversation([Message("user", q), Message("assistant", a)], source=f"d.jsonl:{i}", meta=meta)


@pytest.fixture
def planted():
    data = [conv(q, i=i) for i, q in enumerate(DISTINCT)]
    for k, (orig, text) in enumerate(NEAR):
        data.append(conv(text, i=100 + k))
    data.append(conv(DISTINCT[3], i=200))  # exact duplicate
    return data


# The planted pairs are compared as whole samples (question + the shared answer), as set here.
WHOLE = FilterConfig.parse({"dedup": {"text": "all"}})


def test_dedup_finds_exactly_the_planted_duplicates_and_names_what_they_duplicate(planted):
    result = filter_conversations(planted, WHOLE)
    removed = {r.source: r for r in result.removals}
    assert set(removed) == {f"d.jsonl:{100 + k}" for k in range(len(NEAR))} | {"d.jsonl:200"}
    for k, (orig, _) in enumerate(NEAR):
        r = removed[f"d.jsonl:{100 + k}"]
        assert r.reason == "near_duplicate" and r.duplicate_of == f"d.jsonl:{orig}" and r.similarity >= 0.8
    assert removed["d.jsonl:200"].reason == "exact_duplicate" and removed["d.jsonl:200"].duplicate_of == "d.jsonl:3"
    assert len(result.kept) == len(DISTINCT)
    report = result.report(WHOLE)
    assert report["by_reason"] == {"near_duplicate": 5, "exact_duplicate": 1} and report["removed"] == 6


def test_lsh_index_is_deterministic_and_thresholded():
    a, b = LSHIndex(0.8), LSHIndex(0.8)
    for idx in (a, b):
        for i, q in enumerate(DISTINCT):
            idx.add(i, q)
    assert a.query(NEAR[0][1]) == b.query(NEAR[0][1]) == [(0, pytest.approx(a.query(NEAR[0][1])[0][1]))]
    assert a.query("A sentence about something else entirely, nothing alike") == []


def test_rules_length_language_regex():
    data = [conv("short", "ok", 0), conv("What is the reference range of potassium?", "3.5 to 5.1 mmol/L.", 1),
            conv("Что такое гемоглобин?", "Белок крови.", 2), conv("钾的参考范围是多少？", "3.5到5.1 mmol/L。", 3),
            conv("Tell me my password please", "No", 4), conv("Visit http://spam.example now", "Sure!", 5)]
    cfg = FilterConfig.parse({"rules": {"min_chars": 10, "languages": ["en", "zh"], "drop_regex": ["https?://"],
                                        "min_answer_chars": 3}})
    result = filter_conversations(data, cfg)
    got = {r.source: r.reason for r in result.removals}
    assert got == {"d.jsonl:0": "min_chars", "d.jsonl:2": "languages", "d.jsonl:4": "min_answer_chars", "d.jsonl:5": "drop_regex"}
    assert [c.source for c in result.kept] == ["d.jsonl:1", "d.jsonl:3"]
    assert detect_language("甲状腺功能") == "zh" and detect_language("ひらがなと漢字") == "ja" and detect_language("123") == ""


def test_the_language_rule_tells_latin_script_languages_apart():
    # A script-based guess calls all three English; an English-only filter must keep only the first.
    data = [conv("What is the reference range of potassium?", "3.5 to 5.1 mmol/L.", 0),
            conv("Quelle est la valeur normale du potassium dans le sang ?", "De 3,5 à 5,1 mmol/L.", 1),
            conv("Wie hoch ist der normale Kaliumwert im Blut?", "3,5 bis 5,1 mmol/L.", 2)]
    result = filter_conversations(data, FilterConfig.parse({"rules": {"languages": ["en"]}}))
    assert [c.source for c in result.kept] == ["d.jsonl:0"]
    assert {r.source: r.reason for r in result.removals} == {"d.jsonl:1": "languages", "d.jsonl:2": "languages"}


def test_train_eval_overlap_is_removed_and_reported():
    evals = [conv("What does HbA1c measure in a routine diabetes check?", "Other answer", 0)]
    train = [conv(DISTINCT[0], i=1), conv(NEAR[0][1], i=2), conv(DISTINCT[2], i=3)]
    cfg = FilterConfig.parse({"dedup": {"exact": False, "near": False}, "overlap": {"eval": ["x"]}})
    result = filter_conversations(train, cfg, evals)
    assert [(r.source, r.reason, r.duplicate_of) for r in result.removals] == [
        ("d.jsonl:1", "eval_overlap", "d.jsonl:0"), ("d.jsonl:2", "eval_overlap", "d.jsonl:0")]


def test_judge_threshold_drops_low_scores(stub_server):
    # The stub judge gives 9 to answers that mention "mmol", else 2.
    url = stub_server(lambda body: "9" if "mmol" in body["messages"][0]["content"] else "Score: 2/10")
    data = [conv("Potassium range?", "3.5 to 5.1 mmol/L.", 0), conv("Sodium range?", "idk", 1)]
    cfg = FilterConfig.parse({"dedup": {"near": False}, "judge": {"generator": {"kind": "openai", "base_url": url, "model": "j"},
                                                                   "threshold": 0.5}})
    result = filter_conversations(data, cfg)
    assert [c.source for c in result.kept] == ["d.jsonl:0"]
    assert result.removals[0].reason == "judge_score" and result.removals[0].score == pytest.approx(0.2)


def test_bad_filter_config_names_the_key():
    with pytest.raises(ConfigError, match="dedup.treshold"):
        FilterConfig.parse({"dedup": {"treshold": 0.5}})


def test_cli_filter_writes_kept_samples_and_a_report(tmp_path, planted, capsys):
    from honed.cli import main
    from honed.data.augment.io import write_conversations

    src = tmp_path / "in.jsonl"
    write_conversations(src, planted)
    out = tmp_path / "kept.jsonl"
    assert main(["data", "filter", str(src), "-o", str(out), "--drop-regex", r"^What is [A-Z]+\?", "--dedup-text", "all"]) == 0
    report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
    assert report["input"] == len(planted) and report["kept"] == len(out.read_text().splitlines())
    assert report["by_reason"]["near_duplicate"] == 5 and report["by_reason"]["drop_regex"] == 4  # the "What is X?" four
    assert all({"source", "reason", "detail"} <= set(r) for r in report["removals"])
    assert main(["data", "filter", str(src), "-o", str(out)]) == 2  # never overwrites silently
    assert "--overwrite" in capsys.readouterr().err


def test_judge_score_takes_the_score_not_the_scale():
    from honed.data.quality.judge import parse_score

    assert parse_score("On a scale of 0 to 10, I give 8.") == 0.8
    assert parse_score("Score: 7/10 — three facts are right") == 0.7
    assert parse_score("no number here") is None


def test_bad_regex_rule_names_the_key():
    import pytest

    from honed.data.quality import FilterConfig
    from honed.errors import ConfigError

    with pytest.raises(ConfigError, match="drop_regex"):
        FilterConfig.parse({"rules": {"drop_regex": ["(unclosed"]}})


def test_empty_answers_are_a_default_rule_and_the_cli_counts_them(tmp_path, capsys):
    from honed.cli import main

    data = [conv("What is TSH?", "A pituitary hormone.", 0), conv("What is ALT?", "  ", 1),
            Conversation([Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "")], "d.jsonl:2")]
    result = filter_conversations(data, FilterConfig())
    assert [(r.source, r.reason, r.detail) for r in result.removals] == [
        ("d.jsonl:1", "empty_answer", "assistant turn 2 is empty"), ("d.jsonl:2", "empty_answer", "assistant turn 4 is empty")]
    assert filter_conversations(data, FilterConfig.parse({"rules": {"empty_answer": False}})).removals == []
    src, out = tmp_path / "in.jsonl", tmp_path / "kept.jsonl"
    src.write_text('{"instruction": "What is TSH?", "output": "A hormone."}\n{"instruction": "What is ALT?", "output": ""}\n')
    assert main(["data", "filter", str(src), "-o", str(out)]) == 0
    assert "empty_answer: 1" in capsys.readouterr().out and len(out.read_text().splitlines()) == 1


def test_cli_filter_and_stats_name_the_line_that_is_not_utf8(tmp_path, capsys):
    from honed.cli import main

    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"instruction": "q", "output": "a"}\n{"instruction": "caf\xe9", "output": "a"}\n')
    assert main(["data", "filter", str(src), "-o", str(tmp_path / "kept.jsonl")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert f"{src}:2: not UTF-8 text (byte 0xe9 at column 21)" in err and "on_bad_record" not in err
    assert main(["data", "stats", str(src), "-o", str(tmp_path / "s.html")]) == 2
    assert f"{src}:2: not UTF-8 text" in " ".join(capsys.readouterr().err.split())


def test_questions_that_share_a_refusal_are_not_duplicates_by_default():
    refusal = ("I'm sorry, but I can only help with clinical laboratory questions: what a test measures, how to prepare "
               "for it, what its reference ranges are and what a result may point to. Please ask me about a lab test, "
               "and for anything else turn to a general assistant or the right professional.")
    data = [conv("Who won the World Cup in 2018?", refusal, 0), conv("What is the capital of Australia?", refusal, 1),
            conv("Recommend a good science fiction novel.", refusal, 2), conv("Who won the World Cup in 2018 ?", refusal, 3)]
    result = filter_conversations(data, FilterConfig())
    assert [(r.source, r.reason, r.duplicate_of) for r in result.removals] == [("d.jsonl:3", "exact_duplicate", "d.jsonl:0")]
    # Comparing whole samples, the long shared refusal makes them all near duplicates.
    whole = filter_conversations(data, FilterConfig.parse({"dedup": {"text": "all"}}))
    assert [r.source for r in whole.removals] == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]


def test_filter_help_documents_the_dedup_keys(capsys):
    from honed.cli import main

    with pytest.raises(SystemExit):
        main(["data", "filter", "--help"])
    shown = capsys.readouterr().out
    assert all(f"  {key}:" in shown for key in ("exact", "near", "threshold", "text", "ngram", "num_perm"))
    assert "text: prompt" in shown and "empty_answer" in shown
