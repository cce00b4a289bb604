"""`honed eval` under torchrun (gloo on the CPU, 2 ranks) writes the report one process writes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from honed.eval import eval_config_from_dict, evaluate
from honed.guard.gate import load_gate
from honed.quickstart import resource_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def eval_config(tmp_path) -> dict:
    """The shipped tiny base (it writes real words) on 11 samples (6 in-domain, 5 out-of-domain) in 3 batches of 4 (2 batches for
    rank 0, 1 for rank 1), with every sharded pass on: answers, reference loss, preference pairs,
    stability sampling with the greedy re-ask, and the general-ability set."""
    records = [json.loads(line) for line in resource_path("sample_data", "clinical_lab_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:6] + records[15:20]), encoding="utf-8")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in (
        {"prompt": "What is TSH?", "chosen": "A pituitary hormone.", "rejected": "Pizza is great."},
        {"prompt": "Who won the cup?", "chosen": "I only answer clinical laboratory questions.", "rejected": "Argentina."},
        {"prompt": "What is ALT?", "chosen": "A liver enzyme.", "rejected": "A band."})))
    return {"models": [{"path": str(resource_path("tiny_base")), "name": "tiny"}],
            "data": {"path": str(data), "system_prompt": "Lab questions only."}, "preference": {"path": str(pairs)},
            "device": "cpu", "generation": {"max_new_tokens": 6, "batch_size": 4},
            "stability": {"samples": 2, "prompts": 3}, "general": {"enabled": True, "max_new_tokens": 3},
            "refusal": {"phrases": ["clinical laboratory"]}}


def _predictions(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["models"]["tiny"].pop("latency_s")  # wall time of the batch
    return rows


def test_two_ranks_write_the_report_of_one_process(eval_config, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: the same kernels, the same rounding
    try:
        evaluate(eval_config_from_dict({**eval_config, "output_dir": str(tmp_path / "one")}), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(eval_config))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # --standalone: torchrun's agent binds port 0 for its store and the workers join it (a port found
    # free beforehand, as --master-port needs, can be taken by another process before the agent binds it)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           "-m", "honed", "eval", str(config), f"output_dir={tmp_path / 'two'}", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("honed eval: tiny") == 1 and proc.stderr.count("done: 1 model(s)") == 1  # rank 0 alone reports

    one, two = (json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8")) for d in ("one", "two"))
    got, want = two["models"][0]["metrics"], one["models"][0]["metrics"]
    assert got["efficiency"]["processes"] == 2 and want["efficiency"]["processes"] == 1
    assert got["efficiency"]["generated_tokens"] == want["efficiency"]["generated_tokens"] == 11 * 6
    for section in ("loss", "preference"):  # teacher-forced scores: the same within float tolerance
        assert got.pop(section) == pytest.approx(want.pop(section), abs=1e-6), section
    assert want["domain"]["per_split"]["out_of_domain"]["n"] == 5 and want["stability"]["n_prompts"] == 3
    for section in ("generation", "generation_counts", "domain", "classification", "diversity", "stability", "general"):
        assert got[section] == want[section], section
    assert two["general_ability"] == one["general_ability"] and two["comparison"] == one["comparison"]

    rows_two, rows_one = _predictions(tmp_path / "two"), _predictions(tmp_path / "one")
    answers = [row["models"]["tiny"]["answer"] for row in rows_one]
    assert len(set(answers)) == 11 and all(answers)  # real, distinct answers: the equality below says something
    assert [row["models"]["tiny"]["answer"] for row in rows_two] == answers  # greedy: identical, in sample order
    for a, b in zip(rows_two, rows_one):
        assert a["models"]["tiny"].pop("loss") == pytest.approx(b["models"]["tiny"].pop("loss"), abs=1e-6)
        assert a == b


# Imported first by every process of the run below (it leads PYTHONPATH): records each gate and embedder
# load with the rank that made it ("launcher" for `honed eval --nproc-per-node` itself).
_RECORD_GATE_LOADS = '''
import os

import honed.guard.gate as gate_module

def _recording(what, real):
    def load(*args, **kwargs):
        with open(os.environ["HONED_TEST_GATE_LOADS"], "a", encoding="utf-8") as log:
            log.write(f"{what} {os.environ.get('RANK', 'launcher')}\\n")
        return real(*args, **kwargs)
    return load

gate_module.load_gate = _recording("gate", gate_module.load_gate)
gate_module.load_embedder = _recording("embedder", gate_module.load_embedder)
'''


def test_two_ranks_with_a_gate_load_it_on_rank_0_only(eval_config, tmp_path):
    from honed.cli import main

    questions = [json.loads(line)["messages"][0]["content"] for line in Path(eval_config["data"]["path"]).read_text(encoding="utf-8").splitlines()]
    ins, ood = tmp_path / "in.txt", tmp_path / "ood.txt"  # the gate passes the 6 in-domain questions and 1 of the 5 others
    ins.write_text("\n".join(questions[:6] + ["What is a normal TSH level?", "What does ferritin measure?"]) + "\n")
    ood.write_text("How do I bake sourdough bread?\nWho won the football world cup?\nWrite a poem about the sea.\n")
    gate = tmp_path / "gate"
    assert main(["guard", "fit", "--in-domain", str(ins), "--out-of-domain", str(ood), "--out", str(gate), "--embedder", "char-ngram", "--target-tpr", "0.9",
                 "--contrast", "0"]) == 0  # one-class: the refused indices below
    cfg = {k: v for k, v in eval_config.items() if k not in ("preference", "stability", "general")}
    cfg["generation"] = {"max_new_tokens": 3, "batch_size": 4}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the Python API takes the gate's folder too
        evaluate(eval_config_from_dict({**cfg, "output_dir": str(tmp_path / "one")}), show_progress=False,
                     gate=functools.partial(load_gate, gate))
    finally:
        torch.set_num_threads(threads)

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_RECORD_GATE_LOADS, encoding="utf-8")
    loads = tmp_path / "loads.txt"
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT / 'src'}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HONED_TEST_GATE_LOADS": str(loads)}
    proc = subprocess.run([sys.executable, "-m", "honed", "eval", str(config), f"output_dir={tmp_path / 'two'}", "--no-progress",
                           "--nproc-per-node", "2", "--guard", str(gate)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(loads.read_text(encoding="utf-8").splitlines()) == ["embedder 0", "gate 0"]  # rank 1 never touched it

    one, two = (json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8")) for d in ("one", "two"))
    assert two["gate"]["refused"] == one["gate"]["refused"] == 4 and two["gate"]["n"] == 11
    rows_two = _predictions(tmp_path / "two")
    assert [i for i, row in enumerate(rows_two) if row["models"]["tiny"].get("refused")] == [6, 7, 8, 10]  # the gate's four
    assert two["models"][0]["metrics"]["domain"] == one["models"][0]["metrics"]["domain"]
    rows_one = _predictions(tmp_path / "one")
    for a, b in zip(rows_two, rows_one):
        assert a["models"]["tiny"].pop("loss") == pytest.approx(b["models"]["tiny"].pop("loss"), abs=1e-6)
    assert rows_two == rows_one


@pytest.mark.parametrize("ranks", [[], ["--nproc-per-node", "2"]])
def test_a_folder_that_is_no_gate_stops_before_any_model_or_worker(eval_config, tmp_path, capsys, ranks):
    from honed.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({**eval_config, "output_dir": str(tmp_path / "out")}))
    assert main(["eval", str(config), "--guard", str(tmp_path / "nogate"), "--no-progress", *ranks]) == 2
    assert "not a gate (the folder does not exist)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
