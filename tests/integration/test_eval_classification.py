"""Classification end to end: a tiny model trained until its greedy answers are labels, then
`honed eval` metrics pinned against scikit-learn computed from those same answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

LABELS = ["blood", "urine"]
TRAIN = [("glucose in plasma", "blood"), ("hemoglobin level", "blood"), ("platelet count", "blood"),
         ("serum potassium", "blood"), ("white cell count", "blood"), ("ferritin test", "blood"),
         ("protein in the sample cup", "urine"), ("ketones on a dipstick", "urine"), ("urinalysis nitrite", "urine"),
         ("specific gravity of pee", "urine"), ("bladder culture", "urine"), ("morning void sample", "urine")]
# Unseen prompts: the model answers with a label, right or wrong; the metrics must match sklearn either way.
UNSEEN = [("iron in serum", "blood"), ("plasma sodium", "blood"), ("count of cells", "urine"), ("sample cup glucose", "blood"), ("urine ketones", "urine"), ("blood culture", "blood"),
          ("potassium in pee", "urine"), ("hemoglobin on a dipstick", "urine"), ("nitrite level", "urine"), ("serum protein", "blood")]
PROMPT = "Which specimen, blood or urine? {}"


@pytest.fixture(scope="module")
def labeller(tmp_path_factory, tiny_model_dir):
    from honed.config import config_from_dict
    from honed.train.sft import train

    root = tmp_path_factory.mktemp("labeller")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": PROMPT.format(q), "output": a}) + "\n" for q, a in TRAIN))
    cfg = config_from_dict({
        "model": {"name_or_path": str(tiny_model_dir("qwen2"))},
        "data": {"train": [str(data)], "max_seq_length": 64},
        "method": "full",
        "training": {"output_dir": str(root / "run"), "epochs": 12, "batch_size": 4, "learning_rate": 1e-2,
                     "lr_scheduler": "constant", "warmup_ratio": 0.0, "seed": 0, "tensorboard": False}})
    result = train(cfg, show_progress=False)
    assert result.steps == 36
    return root / "run"


def test_classification_metrics_equal_sklearn_on_the_models_own_answers(labeller, tmp_path):
    from honed.eval import eval_config_from_dict, evaluate

    rows = TRAIN + UNSEEN
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps({"prompt": PROMPT.format(q), "label": a, "reference": a}) + "\n" for q, a in rows))
    cfg = eval_config_from_dict({"models": [{"path": str(labeller)}], "data": {"path": str(data)}, "labels": LABELS,
                                 "generation": {"max_new_tokens": 4, "batch_size": 16}, "loss": False, "device": "cpu"})
    result = evaluate(cfg, show_progress=False, write=False)
    per_sample = result.runs[0].per_sample
    predicted = [s["predicted_label"] for s in per_sample]
    # Trained until its greedy answers are labels: every answer is one, and every trained prompt is right.
    assert None not in predicted
    assert predicted[:len(TRAIN)] == [a for _, a in TRAIN]
    gold = [a for _, a in rows]
    assert predicted != gold  # some unseen prompts are answered wrongly: the metrics are not all 1.0
    cls = result.report["models"][0]["metrics"]["classification"]
    assert cls["n_scored"] == len(rows) and cls["n_invalid"] == 0
    assert cls["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
    assert cls["confusion_matrix"] == confusion_matrix(gold, predicted, labels=LABELS).tolist()
    assert cls["macro"]["f1"] == pytest.approx(f1_score(gold, predicted, labels=LABELS, average="macro", zero_division=0))
    assert cls["macro"]["precision"] == pytest.approx(precision_score(gold, predicted, labels=LABELS, average="macro", zero_division=0))
    assert cls["macro"]["recall"] == pytest.approx(recall_score(gold, predicted, labels=LABELS, average="macro", zero_division=0))
    for label in LABELS:
        assert cls["per_class"][label]["f1"] == pytest.approx(f1_score(gold, predicted, pos_label=label, average="binary", zero_division=0))
    # AUC from the model's log-likelihood of each label: sklearn on the same scores.
    scores = np.array([[s["label_log_likelihoods"][lab] for lab in LABELS] for s in per_sample])
    expected_auc = roc_auc_score([g == "urine" for g in gold], scores[:, 1] - scores[:, 0])
    assert cls["auc_roc"] == pytest.approx(expected_auc)
