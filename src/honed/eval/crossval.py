"""k-fold cross-validation for small data sets: split the training file(s) into K folds
(scikit-learn's KFold, or StratifiedKFold when the records carry a label or a domain split),
train on K−1 folds with the config, evaluate on the held-out fold, and report mean ± std per metric.

Layout of the output folder (each fold resumable: a fold whose run finished is not trained again)::

    OUT/fold-1/train.jsonl  test.jsonl  run/  eval/      (… fold-K)
    OUT/cv_report.json                                    per-fold summaries, mean, std

>>> result = cross_validate(load_config("train.yaml"), k=5, output_dir="cv")      # doctest: +SKIP
>>> result.report["metrics"]["rougeL"]["mean"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honed.config import DataSource, TrainConfig, deep_merge
from honed.data.readers import read_records
from honed.errors import ConfigError, DataError, OutputExistsError
from honed.utils.fs import write_text_atomic

log = logging.getLogger(__name__)

CV_SCHEMA = "honed.eval.cv_report"


@dataclass
class CVResult:
    report: dict
    output_dir: Path


def refuse_folder_holding_inputs(out: Path, inputs: list[str | Path], flag: str = "--output") -> None:
    """Before a folder is deleted for --overwrite: refuse when it is or holds one of the inputs."""
    target = out.expanduser().resolve()
    for item in inputs:
        path = Path(item).expanduser().resolve()
        if path.exists() and (path == target or target in path.parents):
            raise OutputExistsError(f"{flag} {out} holds {item}, an input of this run; --overwrite would delete it. "
                                    "Choose another output folder")


def stratify_values(records: list[dict], fields: tuple[str, ...] = ("label", "kind")) -> list[str] | None:
    """The first of `fields` that every record has (as strings), or None (plain KFold)."""
    for name in fields:
        values = [r.get(name) for r in records]
        if all(v is not None and v != "" for v in values):
            return [str(v) for v in values]
    return None


def make_folds(n: int, k: int, seed: int = 0, strata: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
    """(train indices, test indices) of each fold. Stratified when `strata` is given and every
    class has at least `k` members; otherwise plain shuffled KFold (logged).

    >>> [test for _, test in make_folds(6, 3, seed=0)]
    [[2, 5], [1, 3], [0, 4]]
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise ConfigError(f"--cv {k}: cross-validation needs at least 2 folds")
    if n < k:
        raise DataError(f"--cv {k}: only {n} training records; use at most {n} folds")
    if strata is not None:
        smallest = min(Counter(strata).values())
        if smallest >= k:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            return [(sorted(a.tolist()), sorted(b.tolist())) for a, b in splitter.split(np.zeros(n), strata)]
        log.warning("cross-validation: a class has only %d records (< %d folds); folds are not stratified", smallest, k)
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [(sorted(a.tolist()), sorted(b.tolist())) for a, b in splitter.split(np.zeros(n))]


def _training_records(cfg: TrainConfig) -> list[dict]:
    records = []
    for src in cfg.data.train:
        if src.weight != 1.0:
            log.warning("cross-validation: weight %s of %s is not applied (every record is one item of a fold)", src.weight, src.path)
        records += [record for _, record in read_records(src.path)]
    if not records:
        raise DataError(f"{', '.join(s.path for s in cfg.data.train)}: no training records to cross-validate")
    return records


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _write_fold_file(path: Path, text: str) -> None:
    """Write a fold's data; an existing different file means another plan lives here: refuse."""
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise OutputExistsError(f"{path} holds another fold plan (other data, K or seed); choose another output folder or pass --overwrite")
    if not path.exists():
        write_text_atomic(path, text)


def fold_train_config(cfg: TrainConfig, train_file: Path, run_dir: Path) -> TrainConfig:
    """The config of one fold: its training file, no validation files, its own run folder."""
    fold = cfg.model_copy(deep=True)
    prompt = cfg.data.train[0].system_prompt if len(cfg.data.train) == 1 else None
    fold.data.train = [DataSource(path=str(train_file), system_prompt=prompt)]
    fold.data.validation = []
    fold.training.output_dir = str(run_dir)
    fold.training.overwrite = True  # an unfinished run of this fold is restarted (finished ones are skipped)
    fold.training.resume = False
    return fold


def fold_eval_config(cfg: TrainConfig, eval_raw: dict, test_file: Path, run_dir: Path, out: Path):
    """The eval config of one fold: the fold's run on its held-out records, the training scope prompt."""
    from honed.eval.config import eval_config_from_dict

    data = {"path": str(test_file)}
    if cfg.data.system_prompt:
        data["system_prompt"] = cfg.data.system_prompt
    elif cfg.data.system_prompt_file:
        data["system_prompt_file"] = cfg.data.system_prompt_file
    raw = deep_merge({"data": data}, eval_raw)
    raw["data"]["path"] = str(test_file)
    raw.update(models=[{"path": str(run_dir), "name": "model"}], output_dir=str(out), overwrite=True)
    raw.pop("baseline", None)
    return eval_config_from_dict(raw, "cross-validation eval settings")


def summarize_folds(summaries: list[dict[str, float]]) -> dict[str, dict]:
    """mean, std (sample std, ddof=1) and the per-fold values of every metric all folds have.

    >>> summarize_folds([{"a": 1.0}, {"a": 3.0}])["a"]["mean"], summarize_folds([{"a": 1.0}, {"a": 3.0}])["a"]["std"]
    (2.0, 1.4142135623730951)
    """
    keys = [k for k in summaries[0] if all(k in s for s in summaries)]
    out = {}
    for key in keys:
        values = np.array([s[key] for s in summaries], float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "values": values.tolist()}
    return out


def cross_validate(cfg: TrainConfig, k: int, output_dir: str | Path, *, eval_raw: dict | None = None, seed: int | None = None,
                   overwrite: bool = False, show_progress: bool = True) -> CVResult:
    """Train and evaluate K folds of `cfg`'s training data; write OUT/cv_report.json."""
    from honed.eval.report import LABELS
    from honed.eval.runner import evaluate
    from honed.train.sft import train

    if cfg.stages:
        raise ConfigError("--cv: a staged config (stages:) cannot be cross-validated; cross-validate one stage's config")
    out = Path(output_dir)
    if overwrite and out.exists():
        refuse_folder_holding_inputs(out, [s.path for s in [*cfg.data.train, *cfg.data.validation]] + [cfg.model.name_or_path])
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()) and not (out / "fold-1").is_dir():
        raise OutputExistsError(f"{out} is not empty and holds no cross-validation; choose another folder or pass --overwrite")
    seed = cfg.training.seed if seed is None else seed
    records = _training_records(cfg)
    eval_raw = eval_raw or {}
    fields = tuple(f for f in ((eval_raw.get("data") or {}).get("label_field", "label"),
                               (eval_raw.get("data") or {}).get("split_field", "kind")))
    strata = stratify_values(records, fields)
    folds = make_folds(len(records), k, seed, strata)
    fold_eval_config(cfg, eval_raw, out / "test.jsonl", out / "run", out / "eval")  # bad eval settings stop before training
    fold_rows = []
    for i, (train_idx, test_idx) in enumerate(folds, 1):
        folder = out / f"fold-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        train_text, test_text = _jsonl([records[j] for j in train_idx]), _jsonl([records[j] for j in test_idx])
        _write_fold_file(folder / "train.jsonl", train_text)
        _write_fold_file(folder / "test.jsonl", test_text)
        run_dir = folder / "run"
        if (run_dir / "run_info.json").is_file():
            log.info("fold %d/%d: training skipped (done)", i, k)
        else:
            log.info("fold %d/%d: training on %d records", i, k, len(train_idx))
            train(fold_train_config(cfg, folder / "train.jsonl", run_dir), show_progress=show_progress)
        log.info("fold %d/%d: evaluating on %d held-out records", i, k, len(test_idx))
        result = evaluate(fold_eval_config(cfg, eval_raw, folder / "test.jsonl", run_dir, folder / "eval"), show_progress=show_progress)
        fold_rows.append({"fold": i, "n_train": len(train_idx), "n_test": len(test_idx),
                          "data_sha256": hashlib.sha256(test_text.encode()).hexdigest()[:16],
                          "summary": result.report["models"][0]["summary"]})
    metrics = summarize_folds([r["summary"] for r in fold_rows])
    report = {"schema": CV_SCHEMA, "schema_version": 1, "k": k, "seed": seed, "stratified_by": None if strata is None else
              next(f for f in fields if stratify_values(records, (f,)) is not None),
              "n_records": len(records), "train_files": [s.path for s in cfg.data.train], "folds": fold_rows,
              "metrics": metrics, "metric_labels": {key: LABELS.get(key, key) for key in metrics}}
    write_text_atomic(out / "cv_report.json", json.dumps(report, indent=2, ensure_ascii=False))
    return CVResult(report, out)


def cv_table(report: dict):
    """A rich Table: metric, mean ± std, and each fold's value."""
    from rich.table import Table

    table = Table(title=f"{report['k']}-fold cross-validation ({report['n_records']} records"
                        + (f", stratified by {report['stratified_by']})" if report["stratified_by"] else ")"), title_justify="left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for row in report["folds"]:
        table.add_column(f"fold {row['fold']}", justify="right")
    for key, m in report["metrics"].items():
        table.add_row(report["metric_labels"].get(key, key), f"{m['mean']:.4f} ± {m['std']:.4f}", *(f"{v:.4f}" for v in m["values"]))
    return table
