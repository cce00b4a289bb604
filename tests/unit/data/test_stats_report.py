"""`honed data stats`: a self-contained HTML page with the plots and the side-by-side view."""

from __future__ import annotations

import base64
import re

from honed.data import Conversation, Message
from honed.data.stats_report import compute_stats, render_html


def sample(i, label, text):
    return Conversation([Message("user", f"Sentiment:\n{text}"), Message("assistant", label)], source=f"d:{i}", meta={"label": label})


DATA = [sample(0, "positive", "I loved it"), sample(1, "negative", "Awful food"), sample(2, "positive", "I loved it"),
        sample(3, "neutral", "这部电影还行吧")]


def test_stats_count_labels_languages_and_duplicates():
    s = compute_stats(DATA)
    assert s["labels"]["label"] == {"positive": 2, "negative": 1, "neutral": 1}
    assert s["languages"] == {"en": 3, "zh": 1} and s["exact_duplicates"] == 1 and s["duplication_rate"] == 0.25


def test_html_is_self_contained_with_plots_and_pairs(tmp_path):
    aug = Conversation([Message("user", "Sentiment:\nI really loved it"), Message("assistant", "favourable")], source="a:0",
                       meta={"label": "positive", "augmented_from": "d:0", "augmentations": [{"name": "label_synonym"}]})
    page = render_html(DATA, [aug])
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 2 and all(base64.b64decode(x)[:4] == b"\x89PNG" for x in images)
    assert "Original vs augmented (1 shown)" in page and "I really loved it" in page and "label_synonym" in page
    assert not re.search(r'(src|href)="(http|/)', page)  # nothing loaded from elsewhere


def test_cli_stats_with_a_recipe(tmp_path):
    from honed.cli import main
    from honed.data.augment.io import write_conversations

    src = tmp_path / "d.jsonl"
    write_conversations(src, DATA)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\nlabels: {positive: [positive, favourable], negative: [negative, unfavourable], neutral: [neutral, mixed]}\n"
                      "steps: [{name: label_synonym}]\n")
    out = tmp_path / "s.html"
    assert main(["data", "stats", str(src), "--recipe", str(recipe), "-o", str(out)]) == 0
    assert "Original vs augmented" in out.read_text() and "favourable" in out.read_text()
    assert main(["data", "stats", str(src), "-o", str(out)]) == 2


def test_balance_charts_cover_kind_and_other_categorical_fields():
    convs = [Conversation([Message("user", f"q{i}"), Message("assistant", "a")], source=f"d:{i}",
                          meta={"kind": "in_domain" if i < 3 else "out_of_domain", "topic": "ab"[i % 2], "id": i,
                                "note": f"free text {i}"})
             for i in range(5)]
    s = compute_stats(convs)
    # kind (what `honed eval` reads) and topic (repeated short values) are charted; ids and free text are not.
    assert s["labels"] == {"kind": {"in_domain": 3, "out_of_domain": 2}, "topic": {"a": 3, "b": 2}}
    page = render_html(convs)
    assert "Balance: kind" in page and "Balance: topic" in page and "Balance: note" not in page


def test_stats_json_has_the_token_lengths_the_page_shows(tmp_path, capsys, tiny_model_dir):
    import json

    from honed.cli import main
    from honed.config import ModelConfig
    from honed.data.augment.io import write_conversations
    from honed.model.load import load_tokenizer

    src = tmp_path / "d.jsonl"
    write_conversations(src, DATA)
    model = tiny_model_dir("qwen2")
    assert main(["data", "stats", str(src), "--model", str(model), "--json", "-o", str(tmp_path / "s.html")]) == 0
    shown = json.loads(capsys.readouterr().out.rsplit("wrote", 1)[0])
    tok = load_tokenizer(ModelConfig(name_or_path=str(model)))
    tokens = sorted(len(tok.encode(f"Sentiment:\n{t}\n{lab}", add_special_tokens=False)) for lab, t in
                    [("positive", "I loved it"), ("negative", "Awful food"), ("positive", "I loved it"), ("neutral", "这部电影还行吧")])
    assert shown["lengths"]["tokens"] == {"min": tokens[0], "mean": sum(tokens) / 4, "p50": tokens[1], "p90": tokens[3],
                                          "p99": tokens[3], "max": tokens[3]}
    # Characters by hand: prompts "Sentiment:\n" + text (11 + 10, 11 + 10, 11 + 10, 11 + 7).
    assert shown["lengths"]["prompt_chars"] == {"min": 18, "mean": 20.25, "p50": 21, "p90": 21, "p99": 21, "max": 21}


def test_stats_refuses_an_empty_answer_with_its_line(tmp_path, capsys):
    from honed.cli import main

    src = tmp_path / "d.jsonl"
    src.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": ""}\n')
    assert main(["data", "stats", str(src), "-o", str(tmp_path / "s.html")]) == 2
    assert f"{src}:2: assistant turn 2 is empty" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "s.html").exists()
