"""Which embedder gates the bilingual sample domain best? AUROC per language on held-out questions.

Fits one-class gates (knn, k=3) on the in-domain questions of the sample training file and scores
questions none of them saw: the eval file's in-domain questions (15 per language, none verbatim in
train) against every out-of-domain question of both files (45 per language; the one-class gates
never see any out-of-domain question). "mean" averages the MiniLM and char-ngram scores.

    PYTHONPATH=src python benchmarks/guard/bilingual.py
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
from sklearn.metrics import roc_auc_score

from honed.guard.fit import fit_gate
from honed.guard.gate import load_gate
from honed.guard.questions import read_questions
from honed.quickstart import resource_path


def by_lang(path, kind):
    out = {"en": [], "zh": []}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r["kind"] == kind:
            out[r["lang"]].append(r["messages"][0]["content"])
    return out


def main() -> None:
    train, held = resource_path("sample_data", "clinical_lab_train.jsonl"), resource_path("sample_data", "clinical_lab_eval.jsonl")
    fit_texts = read_questions(train, "in_domain").texts
    ins = by_lang(held, "in_domain")
    oods = {lang: by_lang(held, "out_of_domain")[lang] + by_lang(train, "out_of_domain")[lang] for lang in ("en", "zh")}
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for emb in ("default", "char-ngram", "zh-words", "auto"):
            fit_gate(fit_texts, f"{tmp}/{emb}", embedder=emb)
            gate = load_gate(f"{tmp}/{emb}")
            for lang in ("en", "zh"):
                d = gate.check_many(ins[lang] + oods[lang])
                scores[emb, lang] = (np.array([x.score for x in d]), np.array([x.in_domain for x in d]))
    print(f"held out: {len(ins['en'])}+{len(ins['zh'])} in-domain, {len(oods['en'])}+{len(oods['zh'])} out-of-domain (en+zh)")
    print("| embedder | AUROC en | AUROC zh | pass in-domain en / zh | pass out-of-domain en / zh |")
    print("|---|---|---|---|---|")
    for emb in ("default", "char-ngram", "zh-words", "mean", "auto"):
        row = []
        passes = []
        for lang in ("en", "zh"):
            labels = np.r_[np.ones(len(ins[lang])), np.zeros(len(oods[lang]))]
            if emb == "mean":
                s = (scores["default", lang][0] + scores["char-ngram", lang][0]) / 2
                passes.append(None)
            else:
                s, passed = scores[emb, lang]
                passes.append((passed[: len(ins[lang])].mean(), passed[len(ins[lang]) :].mean()))
            row.append(f"{roc_auc_score(labels, s):.3f}")
        fmt = lambda i: " / ".join("-" if p is None else f"{p[i]:.0%}" for p in passes)  # noqa: E731
        print(f"| {emb} | {row[0]} | {row[1]} | {fmt(0)} | {fmt(1)} |")


if __name__ == "__main__":
    main()
