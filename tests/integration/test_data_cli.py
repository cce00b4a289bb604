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
