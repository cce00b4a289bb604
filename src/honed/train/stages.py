"""Task decomposition (16): a config with `stages:` trains several stages in order, each from the last.

    model: {name_or_path: Qwen2.5-1.5B-Instruct}
    data: {train: all.jsonl, max_seq_length: 1024}
    training: {output_dir: runs/report-writer, epochs: 2}
    stages:
      - name: extract                      # stage 1: pull the figures out of a filing
        data: {train: extract.jsonl}
      - name: write                        # stage 2: turn figures into a paragraph
        data: {train: write.jsonl}
        training: {epochs: 3, learning_rate: 1e-4}

Each stage is the top-level config with its own `data:`/`training:` keys merged over it, written
to `OUTPUT/stage-N-NAME` (unless it sets its own output_dir). Stage N+1 starts from stage N's
weights: full fine-tuning loads them as its model; LoRA/QLoRA keep training stage N's adapter (the
same adapter, not a new one stacked on it), so the result is one adapter over the original base.
A finished stage (its run_info.json exists) is not trained again, so re-running a staged config
after an interruption continues with the first unfinished stage (`training.resume: true` also
resumes that stage from its last checkpoint).

A stage may switch objective (`objective:` and its own `preference:` keys), e.g. SFT on answers then
DPO on pairs; the later stage's `data.train` names its own files, and the top level's validation
files (records of the other objective) are not inherited unless the stage names `validation`.
DPO from the previous stage's adapter uses that stage's model as its reference
(`preference.reference: auto` → cache).

    stages:
      - {name: sft, data: {train: answers.jsonl}}
      - {name: dpo, objective: dpo, data: {train: pairs.jsonl, val_ratio: 0.1}, preference: {beta: 0.1},
         training: {epochs: 2, learning_rate: 5e-6}}

>>> results = run_stages(load_config("staged.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from honed.config import TrainConfig, config_from_dict, deep_merge
from honed.errors import ConfigError
from honed.train.distributed import is_main_process
from honed.utils.fs import write_text_atomic

log = logging.getLogger(__name__)


def stage_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """(name, full config) of every stage, validated; errors name the stage and the key."""
    if not cfg.stages:
        raise ConfigError("stages: this config has no stages; train it with `honed train`")
    base = cfg.model_dump(mode="json", exclude={"stages"})
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names must be distinct, got {names}")
    out = []
    for k, stage in enumerate(cfg.stages):
        training = dict(stage.training)
        training.setdefault("output_dir", str(Path(cfg.training.output_dir) / f"stage-{k + 1}-{stage.name}"))
        raw = deep_merge(base, {"data": stage.data, "training": training, "preference": stage.preference})
        if "train" in stage.data:
            raw["data"]["train"] = stage.data["train"]  # a stage's data replaces the top-level files, never mixes in
        if stage.objective is not None and stage.objective != cfg.objective:
            raw["objective"] = stage.objective
            if "validation" not in stage.data:
                raw["data"]["validation"] = []  # the top level's validation files are another objective's records
        out.append((stage.name, config_from_dict(raw, f"stages[{k}] ({stage.name})")))
    return out


def _finished(out: Path) -> bool:
    return (out / "run_info.json").is_file()


def run_stages(cfg: TrainConfig, *, show_progress: bool = True, stop_after_steps: int | None = None) -> list:
    """Train every stage in order; returns their TrainResults (None for stages already finished)."""
    from honed.train.sft import train

    stages = stage_configs(cfg)
    results, previous = [], None
    try:
        for k, (name, stage_cfg) in enumerate(stages):
            out = Path(stage_cfg.training.output_dir)
            if previous is not None and stage_cfg.method == "full":
                stage_cfg.model.name_or_path = str(previous)
            if _finished(out) and not stage_cfg.training.overwrite:
                log.info("stage %d (%s): already finished in %s, not trained again", k + 1, name, out)
                results.append(None)
                previous = out
                continue
            log.info("stage %d/%d (%s) → %s%s", k + 1, len(stages), name, out,
                     f", starting from {previous}" if previous is not None else "")
            adapter = previous is not None and stage_cfg.method in ("lora", "qlora")
            if adapter and not (previous / "adapter_config.json").is_file():
                raise ConfigError(f"stages[{k}] ({name}): method={stage_cfg.method} continues the previous stage's adapter, "
                                  f"but {previous} holds none (was the previous stage full fine-tuning?)")
            if adapter:
                stage_cfg.lora.init_from = str(previous)
            result = train(stage_cfg, show_progress=show_progress, stop_after_steps=stop_after_steps)
            results.append(result)
            if result.interrupted:
                break
            previous = out
    finally:
        # Also when a stage is interrupted: the summary says which stages are done.
        summary = [{"stage": k + 1, "name": n, "output_dir": c.training.output_dir, "finished": _finished(Path(c.training.output_dir))}
                   for k, (n, c) in enumerate(stages)]
        if is_main_process():  # under torchrun, rank 0 alone writes
            write_text_atomic(Path(cfg.training.output_dir) / "stages.json", json.dumps(summary, indent=2))
    return results
