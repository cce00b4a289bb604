"""`honed data augment`: materialise once, atomic, no silent overwrite, per-step table, clear errors."""

from __future__ import annotations

import json
import shutil

from honed.cli import main
from honed.quickstart import resource_path


def test_augment_writes_once_refuses_overwrite_and_prints_step_stats(tmp_path, capsys):
    shutil.copy(resource_path("sentiment", "train.jsonl"), tmp_path / "train.jsonl")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(resource_path("sentiment", "recipe.yaml").read_text(encoding="utf-8") + "output: aug.jsonl\n", encoding="utf-8")
    assert main(["data", "augment", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "label_synonym" in out and "360 samples in" in out
    rows = [json.loads(line) for line in (tmp_path / "aug.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 360 and all(r["label"] in ("positive", "negative", "neutral") for r in rows)
    changed = [r for r in rows if r.get("augmentations")]
    assert changed and all(r["augmented_from"].startswith(str(tmp_path / "train.jsonl")) for r in changed)
    before = (tmp_path / "aug.jsonl").read_bytes()
    assert main(["data", "augment", str(recipe)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "aug.jsonl").read_bytes() == before
    # Same seed → same file; another seed → another file.
    assert main(["data", "augment", str(recipe), "--output", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_bytes() == before
    assert main(["data", "augment", str(recipe), "--seed", "99", "-o", str(tmp_path / "other.jsonl")]) == 0
    assert (tmp_path / "other.jsonl").read_bytes() != before
    assert main(["data", "augment", str(recipe), "--epoch", "1", "-o", str(tmp_path / "e1.jsonl")]) == 0
    assert (tmp_path / "e1.jsonl").read_bytes() != before


def test_bad_recipe_key_and_unfit_transform_are_clear_errors(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"input: {data}\noutput: o.jsonl\nseed: 1\nstep: []\n")
    assert main(["data", "augment", str(bad)]) == 2
    assert "bad.yaml.step: unknown recipe key" in capsys.readouterr().err
    unfit = tmp_path / "unfit.yaml"
    unfit.write_text(f"input: {data}\noutput: o.jsonl\nseed: 1\nlabels: {{pos: [good], neg: [bad]}}\nsteps: [label_synonym]\n")
    assert main(["data", "augment", str(unfit)]) == 2
    err = capsys.readouterr().err
    assert 'no meta["label"]' in err and "on_unfit: skip" in err and not (tmp_path / "o.jsonl").exists()


def test_augment_dry_run_shows_generator_prompts(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "What is TSH?"}, {"role": "assistant", "content": "A hormone."}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {data}\nseed: 1\ngenerator: {{kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m}}\n"
                      "steps: [{name: synthetic, params: {n: 2}}]\n")
    assert main(["data", "augment", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "prompt 2 (synthetic)" in out and "What is TSH?" in out and "nothing called" in out


ALPACA = [{"id": 7, "note": "mine", "label": "positive", "instruction": "Sentiment of this:", "input": "I liked it a lot",
           "output": "positive", "system": "Be brief."},
          {"id": 8, "label": "negative", "instruction": "Sentiment of this:", "input": "The food was awful", "output": "negative"}]


def test_augment_keeps_the_users_fields_and_the_alpaca_form(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\nkeep_original: true\nlabels: {positive: [positive], negative: [negative]}\n"
                      "steps:\n  - {name: hard_negative, probability: 1.0, params: {flip: {positive: negative, negative: positive}}}\n")
    assert main(["data", "augment", str(recipe), "--input", str(src), "-o", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0] == ALPACA[0]  # an original, untouched: exactly as read
    made = [r for r in rows if r.get("augmentations")]
    assert made[0] == {"id": 7, "note": "mine", "label": "negative", "instruction": "Sentiment of this:",
                       "input": made[0]["input"], "output": "negative", "system": "Be brief.", "hard_negative_of": f"{src}:1",
                       "augmentations": made[0]["augmentations"], "augmented_from": f"{src}:1"}
    assert "I liked it a lot" in made[0]["input"] and made[0]["input"] != ALPACA[0]["input"]
    # What a transform did is `details`, never `params` (which a recipe would take as its own).
    assert set(made[0]["augmentations"][0]) == {"name", "details"} and "pattern" in made[0]["augmentations"][0]["details"]


def test_filter_writes_kept_records_exactly_as_read(tmp_path):
    src, out = tmp_path / "a.jsonl", tmp_path / "kept.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [*ALPACA, ALPACA[0]]))
    assert main(["data", "filter", str(src), "-o", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == ALPACA


def test_augment_list_gives_what_each_transform_does_and_its_parameters(capsys):
    assert main(["data", "augment", "--list", "--json"]) == 0
    found = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    noise = found["noise"]
    assert noise["family"] == "noise" and noise["description"].startswith("Add typos and character noise")
    assert noise["params"]["rate"] == 0.05 and not noise["needs_labels"]
    assert found["hard_negative"]["needs_labels"] and set(found["hard_negative"]["params"]) == {"flip", "patterns", "replace_patterns"}
    assert main(["data", "augment", "--list"]) == 0
    shown = capsys.readouterr().out
    assert "what it does" in shown and "replace_patterns" in shown
