"""`honed eval` end to end: the quickstart adapter (trained once per session) against its base."""

from __future__ import annotations

import json
import re

import pytest

from honed.cli import main
from honed.quickstart import resource_path

EVAL_DATA = resource_path("sample_data", "clinical_lab_eval.jsonl")
SYSTEM_PROMPT = resource_path("sample_data", "system_prompt.txt")
# The sample data's refusal convention (see its README): every refusal names the domain.
REFUSAL = ["--refusal-phrase", "clinical laboratory", "--refusal-phrase", "检验"]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The quickstart LoRA recipe, 2 epochs (~40 s on 2 idle cores), validated on the eval file so that
    metrics.jsonl has validation rows, with two checkpoints kept for the learning curve."""
    from honed.config import DataSource
    from honed.quickstart import quickstart_config
    from honed.train.sft import train

    out = tmp_path_factory.mktemp("eval-run") / "run"
    cfg = quickstart_config(None, str(out), epochs=2, device="cpu")
    cfg.data.validation = [DataSource(path=str(EVAL_DATA))]
    cfg.training.eval_steps, cfg.training.save_steps, cfg.training.save_total_limit = 10, 20, 3
    cfg.training.save_best = True  # the report names the best weights' folder (the quickstart keeps its last)
    cfg.training.tensorboard = False
    result = train(cfg, show_progress=False)
    assert result.steps == 24
    return out


@pytest.fixture
def judge_url(stub_server):
    return stub_server(lambda body: '{"relevance": 4, "accuracy": 3, "fluency": 5}')


def test_tuned_model_beats_its_base_and_the_report_says_so(quickstart_run, tmp_path, capsys, judge_url):
    out = tmp_path / "report"
    argv = ["eval", "--model", str(quickstart_run), "--baseline", "base", "--data", str(EVAL_DATA),
            "--system-prompt-file", str(SYSTEM_PROMPT), "--output", str(out), "--max-new-tokens", "32",
            "--batch-size", "10", *REFUSAL, "--stability", "3", "--general", "--judge-url", judge_url,
            "stability.prompts=3", "general.max_new_tokens=12", "judge.max_samples=5", "--no-progress"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "Δ run" in shown and "val. loss" in shown and "fitting:" in shown

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["schema_version"] == 1 and report["baseline"] == "base" and report["evaluated"] == "run"
    tuned, base = (m["summary"] for m in report["models"])
    assert tuned["loss"] < base["loss"] - 2.0  # nats/token on the references
    assert tuned["perplexity"] < base["perplexity"] / 5
    # chrF is left out: after these two epochs on the refusal mix it is level with the base
    # (0.102 vs 0.105, 32 new tokens), whose pre-training text holds the eval answers.
    for metric in ("rougeL", "meteor"):
        assert tuned[metric] > base[metric], metric
    assert tuned["out_of_domain_refused"] >= base["out_of_domain_refused"] + 0.4
    assert tuned["refusal_recall"] > base["refusal_recall"]
    assert report["deltas"]["run"]["loss"] == pytest.approx(tuned["loss"] - base["loss"])
    domain = report["models"][0]["metrics"]["domain"]
    assert domain["per_split"]["in_domain"]["n"] == 30 and domain["per_split"]["out_of_domain"]["n"] == 20
    assert domain["per_split"]["hard_negative"]["n"] == 20  # near-domain questions that belong: their own split
    assert tuned["hard_negative_refused"] == domain["per_split"]["hard_negative"]["refused_rate"]
    # Greedy decoding is deterministic; sampled answers were judged; the general set ran.
    assert tuned["greedy_identical_rate"] == 1.0
    # 3 prompts × 3 sampled answers: each prompt's majority share is 2/3 or 1, so their mean is one of these.
    assert any(tuned["decision_agreement"] == pytest.approx(v) for v in (2 / 3, 7 / 9, 8 / 9, 1.0))
    assert report["models"][0]["metrics"]["stability"]["n_prompts"] == 3
    assert report["models"][0]["metrics"]["general"]["n"] >= 30
    assert report["models"][0]["metrics"]["judge"] == {"relevance": 4.0, "accuracy": 3.0, "fluency": 5.0, "n_scored": 5, "n_failed": 0}
    eff = report["models"][0]["metrics"]["efficiency"]
    assert eff["latency_s"]["p50"] > 0 and eff["tokens_per_s"] > 0  # measured, not left at zero
    assert eff["size_of"] == "adapter" and 0 < eff["size_on_disk_bytes"] < report["models"][1]["metrics"]["efficiency"]["size_on_disk_bytes"]
    fitting = report["fitting"]
    assert fitting["best_step"] == min(fitting["validation"], key=lambda p: p[1])[0]
    assert fitting["best_checkpoint"].endswith("best") and len(fitting["validation"]) == 3  # steps 10, 20, 24

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 70 and set(rows[0]["models"]) == {"run", "base"}
    assert rows[0]["reference"] and "rougeL" in rows[0]["models"]["run"] and "loss" in rows[0]["models"]["base"]
    assert rows[0]["models"]["run"]["judge"] == {"relevance": 4, "accuracy": 3, "fluency": 5}

    html = (out / "report.html").read_text(encoding="utf-8")
    # bars, loss curves, two answered/refused matrices, latency histogram
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 5
    assert "Over- and under-fitting" in html and "General ability" in html and "Efficiency and stability" in html

    # An existing report is never replaced silently.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_every_checkpoint_gives_a_learning_curve_and_labels_give_classification(quickstart_run, tmp_path):
    from honed.eval import eval_config_from_dict, evaluate

    data = tmp_path / "cls.jsonl"
    records = [json.loads(line) for line in EVAL_DATA.read_text(encoding="utf-8").splitlines()]
    picked = records[:4] + records[15:19] + [dict(records[0], kind="maybe")]
    data.write_text("".join(json.dumps({"prompt": r["messages"][0]["content"], "label": r["kind"], "kind": r["kind"]},
                                       ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    cfg = eval_config_from_dict({
        "models": [{"path": str(quickstart_run)}], "data": {"path": str(data), "system_prompt_file": str(SYSTEM_PROMPT)},
        "labels": ["in_domain", "out_of_domain"], "fitting": {"checkpoints": "all"},
        "generation": {"max_new_tokens": 8, "batch_size": 16}, "loss": False, "device": "cpu"})
    result = evaluate(cfg, show_progress=False, write=False)
    names = [m["name"] for m in result.report["models"]]
    assert names == ["run", "run@20", "run@24"]
    assert [p["step"] for p in result.report["learning_curve"]] == [20, 24]
    cls = result.report["models"][0]["metrics"]["classification"]
    # The quickstart model answers in sentences, never a label (test_eval_classification.py trains one
    # that does): each such answer is counted as invalid on its sample, not a crash, and no cell of
    # the confusion matrix is filled.
    predicted = [s["predicted_label"] for s in result.runs[0].per_sample[:8]]
    assert predicted == [None] * 8 and cls["n_scored"] == 8 and cls["n_invalid"] == 8
    assert cls["confusion_matrix"] == [[0, 0], [0, 0]]
    # The label likelihoods still rank: AUC equals sklearn's on the same scores.
    from sklearn.metrics import roc_auc_score

    lls = [s["label_log_likelihoods"] for s in result.runs[0].per_sample[:8]]
    gold = [r["kind"] == "out_of_domain" for r in picked[:8]]
    assert cls["auc_roc"] == pytest.approx(roc_auc_score(gold, [x["out_of_domain"] - x["in_domain"] for x in lls]))
    last = result.runs[0].per_sample[8]
    assert "reference label 'maybe' is not one of" in " ".join(last["errors"])
    assert set(result.runs[0].per_sample[0]["label_log_likelihoods"]) == {"in_domain", "out_of_domain"}
