"""The model card (README.md) honed writes into every adapter, checkpoint and export folder.

It says what the weights are, from the run's own record: base model, method and key settings,
the data files with their sha256 and record counts, the scope prompt, the final losses, and the
`honed eval` headline numbers when a report of this run exists. The YAML front matter is valid
Hugging Face model-card metadata (base_model, library_name, pipeline_tag, tags).

>>> text = render_card({"base_model": "Qwen/Qwen2.5-0.5B", "title": "lab", "kind": "adapter"})
>>> text.splitlines()[:3]
['---', 'base_model: Qwen/Qwen2.5-0.5B', 'library_name: peft']
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from honed.utils.fs import write_text_atomic

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
_SETTINGS = (("lora", ("r", "alpha", "dropout", "target_modules")),
             ("training", ("epochs", "max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
                           "precision", "seed")),
             ("data", ("max_seq_length", "packing", "train_on")))


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_paths(data: dict, split: str) -> list[str]:
    return [s if isinstance(s, str) else s.get("path", "") for s in data.get(split) or []]


def final_losses(run_dir: Path) -> dict:
    """Last train loss, last and best validation loss from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    train = [r for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [r for r in rows if r.get("kind") == "eval" and "loss" in r]
    out = {}
    if train:
        out["final_train_loss"], out["steps"] = train[-1]["loss"], train[-1]["step"]
    if val:
        out["final_validation_loss"] = val[-1]["loss"]
        best = min(val, key=lambda r: r["loss"])
        out["best_validation_loss"], out["best_step"] = best["loss"], best["step"]
    return out


def find_eval_report(run_dir: Path) -> dict | None:
    """The newest `honed eval` report.json (in or beside the run) that evaluated this run's weights."""
    run = run_dir.resolve()
    candidates = [*run.glob("*/report.json"), *run.parent.glob("*/report.json"), run / "report.json"]
    found = []
    for path in candidates:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if report.get("schema") != "honed.eval.report":
            continue
        for m in report.get("models") or []:
            weights = m.get("adapter") or m.get("model_path") or ""
            if weights and Path(weights).expanduser().resolve().is_relative_to(run):
                found.append((path.stat().st_mtime, report))
                break
    return max(found, key=lambda x: x[0])[1] if found else None


def eval_headline(report: dict) -> list[tuple[str, dict]]:
    """(model name, {metric label: value}) for the evaluated model and its baseline."""
    labels = {k: v.get("label", k) for k, v in (report.get("metric_labels") or {}).items()}
    keep = {report.get("evaluated"), report.get("baseline")}
    rows = []
    for m in report.get("models") or []:
        if m.get("name") in keep:
            rows.append((m["name"], {labels.get(k, k): v for k, v in (m.get("summary") or {}).items()
                                     if isinstance(v, (int, float))}))
    return rows


def card_facts(run_dir: str | Path | None, **extra) -> dict:
    """Everything the card says, gathered from a run folder (config.yaml, run_info.json, metrics)."""
    facts: dict = {"kind": "adapter"}
    if run_dir and Path(run_dir).is_dir():
        import yaml

        run = Path(run_dir)
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() else {}
        cfg = cfg or {}
        info = json.loads((run / "run_info.json").read_text(encoding="utf-8")) if (run / "run_info.json").is_file() else {}
        data = cfg.get("data") or {}
        loaded = (info.get("data") or {}).get("loaded") or {}
        files = [{"path": p, "split": split, "sha256": file_sha256(Path(p)), "records": loaded.get(p)}
                 for split in ("train", "validation") for p in _source_paths(data, split)]
        facts.update({
            "base_model": (cfg.get("model") or {}).get("name_or_path"),
            "method": cfg.get("method"),
            "settings": {f"{section}.{k}": (cfg.get(section) or {}).get(k) for section, keys in _SETTINGS for k in keys
                         if (cfg.get(section) or {}).get(k) is not None and (section != "lora" or cfg.get("method") != "full")},
            "data_files": files,
            "data_fingerprint": info.get("data_fingerprint"),
            "samples": {k: (info.get("data") or {}).get(k) for k in ("n_train", "n_validation")},
            "skipped": len((info.get("data") or {}).get("skipped") or []),
            "scope_prompt": data.get("system_prompt"),
            "losses": final_losses(run),
            "eval": eval_headline(r) if (r := find_eval_report(run)) else None,
            "model_type": (info.get("model") or {}).get("model_type"),
        })
    facts.update({k: v for k, v in extra.items() if v is not None})
    return facts


def _yaml_front_matter(facts: dict) -> str:
    import yaml

    kind = facts.get("kind", "adapter")
    meta = {}
    if facts.get("base_model"):
        meta["base_model"] = facts["base_model"]
    meta["library_name"] = "peft" if kind in ("adapter", "checkpoint") and facts.get("method") != "full" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = [t for t in ("honed", facts.get("method"), facts.get("model_type"),
                                "gguf" if facts.get("format") in ("gguf", "ollama") else None) if t]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def render_card(facts: dict) -> str:
    """The card's Markdown text (front matter first)."""
    lines = [_yaml_front_matter(facts), f"# {facts.get('title') or 'honed model'}", ""]
    what = {"adapter": "A fine-tuned model" if facts.get("method") == "full" else "A LoRA adapter", "checkpoint": f"A training checkpoint (step {facts.get('step')})",
            "export": f"An export ({facts.get('format')}{' ' + facts['quant'] if facts.get('quant') else ''})"}
    lines.append(f"{what.get(facts.get('kind'), 'Weights')} made with honed"
                 + (f" from **{facts['base_model']}**" if facts.get("base_model") else "")
                 + (f" by {facts['method']} fine-tuning." if facts.get("method") else "."))
    if facts.get("settings"):
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in facts["settings"].items()]
    if facts.get("data_files"):
        lines += ["", "## Data", "", "| split | file | records | sha256 |", "|---|---|---|---|"]
        lines += [f"| {f['split']} | {f['path']} | {f['records'] if f['records'] is not None else '?'} | "
                  f"{f['sha256'] or 'file not found'} |" for f in facts["data_files"]]
        s = facts.get("samples") or {}
        lines += ["", f"{s.get('n_train')} training and {s.get('n_validation')} validation samples; "
                      f"{facts.get('skipped', 0)} skipped. Data fingerprint: `{facts.get('data_fingerprint')}`."]
    if facts.get("scope_prompt"):
        lines += ["", "## Scope prompt", "", "The system prompt this model was trained with (and is asked with):", ""]
        lines += ["> " + line for line in facts["scope_prompt"].splitlines()]
    if facts.get("losses"):
        lines += ["", "## Results", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {round(v, 4) if isinstance(v, float) else v} |" for k, v in facts["losses"].items()]
    if facts.get("eval"):
        lines += ["", "## Evaluation (honed eval)", ""]
        for name, metrics in facts["eval"]:
            lines.append(f"- **{name}**: " + ", ".join(f"{k} {round(v, 4)}" for k, v in metrics.items()))
    if facts.get("verification"):
        lines += ["", "## Export check", "", facts["verification"]]
    if facts.get("usage"):
        lines += ["", "## Use", "", "```", facts["usage"], "```"]
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, run_dir: str | Path | None = None, *, title: str | None = None, **extra) -> Path:
    """Write README.md into `folder` from the run's record (plus `extra` facts); returns its path."""
    path = Path(folder) / CARD_FILE
    write_text_atomic(path, render_card(card_facts(run_dir, title=title or Path(folder).resolve().name, **extra)))
    return path


def write_run_cards(run_dir: str | Path) -> list[Path]:
    """Cards for a finished run: its final weights, best/ and every checkpoint that holds weights."""
    from honed.model.runs import checkpoint_step, list_checkpoints

    run = Path(run_dir)
    written = []
    if (run / "adapter_config.json").is_file() or (run / "config.json").is_file():
        written.append(write_card(run, run, kind="adapter"))
    best = run / "best"
    if (best / "adapter_config.json").is_file() or (best / "config.json").is_file():
        written.append(write_card(best, run, title=f"{run.resolve().name} (best)", kind="adapter"))
    for ckpt in list_checkpoints(run):
        if (ckpt / "adapter_config.json").is_file():
            written.append(write_card(ckpt, run, title=f"{run.resolve().name} @ step {checkpoint_step(ckpt)}",
                                      kind="checkpoint", step=checkpoint_step(ckpt)))
    return written
