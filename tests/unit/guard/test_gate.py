"""The gate: scores against numpy/scikit-learn references, calibration, storage, clear errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from honed.errors import ConfigError, DataError, ModelError, OutputExistsError
from honed.guard.calibration import split_for_calibration, threshold_for
from honed.guard.embedders import load_embedder
from honed.guard.fit import fit_gate
from honed.guard.gate import GateError, GateIndexError, GateMismatchError, load_gate, read_calibration
from honed.guard.routing import script_of

LAB = [
    "What does HbA1c measure?", "What is a normal TSH level?", "Do I need to fast for a lipid panel?", "What is ALT in a liver panel?",
    "What does a high CRP mean?", "What is a normal fasting glucose?", "Why is potassium high after hemolysis?", "What tube is used for a CBC?",
    "What does ferritin measure?", "What is the normal range for sodium?", "What does creatinine tell about the kidneys?", "What is INR?",
]
OFF = ["How do I bake sourdough bread?", "Who won the football world cup?", "Write a poem about the sea.", "How do I center a div in CSS?"]


@pytest.fixture(scope="module")
def gate_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "gate"
    # contrast 0: the out-of-domain questions are only scored for the report (contrast: its own tests below)
    fit_gate(LAB, out, embedder="char-ngram", k=2, target_tpr=0.75, calibration_fraction=0.34, seed=1, out_of_domain=OFF, contrast=0.0)
    return out


def test_threshold_passes_at_least_the_target_share():
    assert threshold_for([0.9, 0.8, 0.7, 0.6, 0.5], 0.8) == 0.6
    assert threshold_for([0.9, 0.8, 0.7, 0.6, 0.5], 0.95) == 0.5  # 4/5 < 0.95: the lowest must pass too
    assert threshold_for([0.3, 0.1, 0.2, 0.4], 0.5) == 0.3
    assert threshold_for([0.3, 0.1, 0.2, 0.4], 1.0) == 0.1


def test_calibration_split_is_seeded_and_distinct():
    texts = [f"q{i}" for i in range(10)] + ["q1", " q2 "]
    fit, held = split_for_calibration(texts, 0.2, seed=0, where="x")
    assert (len(fit), len(held)) == (8, 2) and not set(fit) & set(held) and sorted(fit + held) == sorted(f"q{i}" for i in range(10))
    assert split_for_calibration(texts, 0.2, seed=0, where="x") == (fit, held)
    with pytest.raises(DataError, match="at least 2"):
        split_for_calibration(["only", "only"], 0.2, seed=0, where="file.txt")


def top_k_mean(emb, questions: list[str], against: list[str], k: int) -> np.ndarray:
    """The knn score by brute force: mean cosine of the k most similar of `against`."""
    return np.sort(emb.encode(questions) @ emb.encode(against).T, axis=1)[:, ::-1][:, :k].mean(1)


def test_gate_folder_layout_and_cross_fitted_calibration(gate_dir):
    cfg = json.loads((gate_dir / "gate.json").read_text())
    part = cfg["parts"]["all"]
    # 12 questions, all indexed; round(1 / 0.34) = 3 folds of 4, each scored against the other two
    assert (cfg["embedder"], cfg["score"], cfg["k"], part["indexed"], part["held_out"], part["folds"]) == ("char-ngram:4096", "knn", 2, 12, 12, 3)
    assert (gate_dir / "index.lance").is_dir()
    calibration = read_calibration(gate_dir)
    assert sorted(c["text"] for c in calibration) == sorted(LAB) and sorted(Counter(c["fold"] for c in calibration).values()) == [4, 4, 4]
    emb = load_embedder("char-ngram")
    for c in calibration:
        others = [d["text"] for d in calibration if d["fold"] != c["fold"]]
        assert c["score"] == pytest.approx(top_k_mean(emb, [c["text"]], others, 2)[0], abs=1e-5)
    assert part["threshold"] == threshold_for([c["score"] for c in calibration], 0.75)
    assert part["pass_rate"] == 0.75 and part["ood"] == 4


def test_above_the_cross_fitting_size_a_share_is_held_out_of_the_index(tmp_path, monkeypatch):
    import honed.guard.calibration as calibration_module

    monkeypatch.setattr(calibration_module, "CROSS_FIT_MAX", 11)
    fit_gate(LAB, tmp_path / "g", embedder="char-ngram", k=2, calibration_fraction=0.34, seed=1)
    part = json.loads((tmp_path / "g" / "gate.json").read_text())["parts"]["all"]
    assert (part["indexed"], part["held_out"], part["folds"]) == (8, 4, 0)  # round(12 x 0.34) = 4 held out
    held = [c["text"] for c in read_calibration(tmp_path / "g")]
    emb = load_embedder("char-ngram")
    expected = top_k_mean(emb, held, [t for t in LAB if t not in held], 2)
    np.testing.assert_allclose([c["score"] for c in read_calibration(tmp_path / "g")], expected, atol=1e-5)


def test_knn_score_matches_brute_force_cosine(gate_dir):
    gate = load_gate(gate_dir)
    emb = load_embedder("char-ngram")
    questions = ["What is a normal potassium level?", "How do I bake bread?"]
    expected = top_k_mean(emb, questions, LAB, 2)  # cross-fitted: every question is indexed
    got = [d.score for d in gate.check_many(questions)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert gate.parts["all"].index.refine_factor == 50  # hashed vectors re-rank more candidates (index.py)
    d = gate.check("What is a normal potassium level?")
    assert d.in_domain == (d.score >= d.threshold) and d.threshold == json.loads((gate_dir / "gate.json").read_text())["parts"]["all"]["threshold"]


@pytest.mark.parametrize("kind", ["centroid", "mahalanobis"])
def test_centroid_and_mahalanobis_match_references(tmp_path, kind):
    from sklearn.covariance import LedoitWolf

    emb = load_embedder("char-ngram:64")
    fit_gate(LAB, tmp_path / "g", embedder="char-ngram:64", score=kind, calibration_fraction=0.25)
    gate = load_gate(tmp_path / "g")

    def reference(fitted_on: np.ndarray, q: np.ndarray) -> np.ndarray:
        if kind == "centroid":
            mean = fitted_on.mean(0)
            return q @ (mean / np.linalg.norm(mean))
        return -np.sqrt(LedoitWolf().fit(fitted_on.astype(np.float64)).mahalanobis(q.astype(np.float64)))

    # cross-fitted: the statistics a gate scores with are fitted on every question ...
    np.testing.assert_allclose([d.score for d in gate.check_many(OFF)], reference(emb.encode(LAB), emb.encode(OFF)), rtol=1e-3, atol=1e-4)
    # ... and each calibration score comes from statistics fitted on the other folds only
    calibration = read_calibration(tmp_path / "g")
    assert len({c["fold"] for c in calibration}) == 4  # round(1 / 0.25)
    for c in calibration:
        rest = emb.encode([d["text"] for d in calibration if d["fold"] != c["fold"]])
        assert c["score"] == pytest.approx(float(reference(rest, emb.encode([c["text"]]))[0]), rel=1e-3, abs=1e-4)


def test_refusals_follow_the_question_language(gate_dir, tmp_path):
    gate = load_gate(gate_dir)
    assert gate.refusal_for("比特币还会涨吗？").startswith("抱歉") and gate.refusal_for("Is bitcoin going up?") == gate.refusal
    fit_gate(LAB, tmp_path / "g", embedder="char-ngram", refusal="Lab questions only.")
    custom = load_gate(tmp_path / "g")
    assert custom.refusal == custom.refusal_for("比特币还会涨吗？") == "Lab questions only."


def test_script_routing():
    assert [script_of(t) for t in ("What is TSH?", "血常规查什么？", "HbA1c 是什么？", "12345", "")] == ["latin", "cjk", "cjk", "latin", "latin"]


def test_empty_in_domain_and_missing_model_write_nothing(tmp_path):
    with pytest.raises(DataError, match="no in-domain questions"):
        fit_gate([], tmp_path / "a", embedder="char-ngram")
    with pytest.raises(ModelError, match="not found"):
        fit_gate(LAB, tmp_path / "b", embedder=str(tmp_path / "no-such-model"))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(gate_dir, tmp_path):
    target = tmp_path / "gate"
    shutil.copytree(gate_dir, target)
    before = (target / "gate.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        fit_gate(LAB, target, embedder="char-ngram")
    assert (target / "gate.json").read_text() == before
    fit_gate(LAB, target, embedder="char-ngram:128", overwrite=True)
    assert json.loads((target / "gate.json").read_text())["embedder"] == "char-ngram:128"


def test_gate_refuses_another_embedder(gate_dir):
    with pytest.raises(GateMismatchError, match="fitted with embedder 'char-ngram:4096', not 'default'"):
        load_gate(gate_dir, embedder="default")
    assert load_gate(gate_dir, embedder="char-ngram").embedder_name == "char-ngram:4096"


def test_missing_and_damaged_gates_are_clear_errors(gate_dir, tmp_path):
    with pytest.raises(GateError, match="not a gate"):
        load_gate(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(gate_dir, broken)
    (broken / "gate.json").write_text("{not json")
    with pytest.raises(GateError, match="damaged gate file"):
        load_gate(broken)
    shutil.copytree(gate_dir, tmp_path / "noindex")
    shutil.rmtree(tmp_path / "noindex" / "index.lance")
    with pytest.raises(GateIndexError, match="index is missing"):
        load_gate(tmp_path / "noindex")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(gate_dir, corrupt)
    for f in (corrupt / "index.lance").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(GateIndexError, match="index cannot be read"):
        load_gate(corrupt)
    bad_data = tmp_path / "bad-data"
    shutil.copytree(gate_dir, bad_data)
    for f in (bad_data / "index.lance" / "data").glob("*"):
        f.write_bytes(b"garbage")
    with pytest.raises(GateIndexError, match="search failed"):
        load_gate(bad_data).check("What is TSH?")


def test_auto_gate_gives_a_script_with_few_questions_no_route_of_its_own(tmp_path):
    report = fit_gate(LAB + ["血常规查什么？", "血糖需要空腹吗？"], tmp_path / "g", embedder="auto", out_of_domain=["比特币还会涨吗？", *OFF])
    # the 5 out-of-domain questions follow to the one route: 4 indexed for the contrast, 1 held out for the report
    assert [(p.route, p.embedder, p.indexed, p.folds, p.ood_indexed, p.ood) for p in report.parts] == [("latin", "minilm", 14, 5, 4, 1)]
    gate = load_gate(tmp_path / "g", embedder="auto")
    assert gate.check("比特币还会涨吗？").route == "latin"
    assert gate.parts["latin"].index.refine_factor == gate.parts["latin"].ood_index.refine_factor == 30  # dense MiniLM vectors


def test_batched_search_gives_the_same_neighbours(gate_dir, monkeypatch):
    import honed.guard.index as index_module

    gate = load_gate(gate_dir)
    questions = ["What is a normal potassium level?", "How do I bake bread?", "What is TSH?"]
    whole = [d.score for d in gate.check_many(questions)]
    monkeypatch.setattr(index_module, "SEARCH_BATCH", 2)
    assert [d.score for d in gate.check_many(questions)] == whole


def test_damaged_statistics_and_calibration_are_gate_errors(tmp_path):
    fit_gate(LAB, tmp_path / "g", embedder="char-ngram:64", score="centroid")
    (tmp_path / "g" / "calibration.jsonl").write_text('{"route": "all", "text": "x", "score": 0.5}\n{broken\n')
    with pytest.raises(GateError, match=r"calibration.jsonl:2: damaged"):
        read_calibration(tmp_path / "g")
    (tmp_path / "g" / "stats-all.npz").write_bytes(b"not numpy")
    with pytest.raises(GateError, match="centroid statistics cannot be read"):
        load_gate(tmp_path / "g")


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_contrast_subtracts_the_score_against_out_of_domain_examples(tmp_path, weight):
    out = tmp_path / "g"
    report = fit_gate(LAB, out, embedder="char-ngram", k=2, calibration_fraction=0.34, seed=1, out_of_domain=OFF, contrast=weight)
    cfg = json.loads((out / "gate.json").read_text())
    part = cfg["parts"]["all"]
    assert (cfg["version"], cfg["contrast"], part["ood_indexed"], part["ood"]) == (2, weight, 3, 1)  # round(4 x 0.34) = 1 held out
    assert (out / "index-ood.lance").is_dir() and report.parts[0].ood_indexed == 3
    ood_held, ood_fit = split_for_calibration(OFF, 0.34, 1, "x")[::-1]
    assert len(ood_fit) == 3 and len(ood_held) == 1
    emb = load_embedder("char-ngram")
    questions = ["What is a normal potassium level?", "How do I bake bread?", "Write a poem about TSH."]
    expected = top_k_mean(emb, questions, LAB, 2) - weight * top_k_mean(emb, questions, ood_fit, 2)
    np.testing.assert_allclose([d.score for d in load_gate(out).check_many(questions)], expected, atol=1e-5)
    calibration = read_calibration(out)  # the threshold is calibrated on contrasted out-of-fold scores
    for c in calibration:
        others = [d["text"] for d in calibration if d["fold"] != c["fold"]]
        in_domain = top_k_mean(emb, [c["text"]], others, 2)[0]
        assert c["score"] == pytest.approx(in_domain - weight * top_k_mean(emb, [c["text"]], ood_fit, 2)[0], abs=1e-5)


def test_contrast_errors_and_a_gate_without_examples(tmp_path):
    with pytest.raises(ConfigError, match="--contrast=-1"):
        fit_gate(LAB, tmp_path / "neg", embedder="char-ngram", out_of_domain=OFF, contrast=-1)
    assert not (tmp_path / "neg").exists()
    fit_gate(LAB, tmp_path / "one", embedder="char-ngram", out_of_domain=None)
    cfg = json.loads((tmp_path / "one" / "gate.json").read_text())
    assert (cfg["version"], cfg["contrast"], cfg["parts"]["all"]["ood_indexed"]) == (1, 0.0, 0)  # readable by a honed without contrast
    fit_gate(LAB, tmp_path / "g", embedder="char-ngram", out_of_domain=OFF)
    cfg = json.loads((tmp_path / "g" / "gate.json").read_text())
    cfg["parts"]["all"]["ood_indexed"] = 7
    (tmp_path / "g" / "gate.json").write_text(json.dumps(cfg))
    with pytest.raises(GateIndexError, match=r"index-ood.lance: holds 3 vectors .* expects 7"):
        load_gate(tmp_path / "g")
