"""Hook into EleutherAI's lm-evaluation-harness for standard benchmarks, when it is installed.

honed does not depend on it; the tasks' data must already be on this machine (its datasets
cache), since no hub is assumed. Results are stored in the report under `lm_eval`.

>>> run_lm_eval(spec, LmEvalConfig(tasks=["arc_easy"], limit=100), device="cuda")  # doctest: +SKIP
{'arc_easy': {'acc,none': 0.71, ...}}
"""

from __future__ import annotations

import importlib.util
import math

from honed.errors import ConfigError, HonedError
from honed.eval.config import LmEvalConfig


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def _numbers_only(results: dict) -> dict:
    # The harness mixes numbers with strings ("N/A") and aliases; keep what a report can show.
    return {task: {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            for task, metrics in results.items()}


def run_lm_eval(spec, cfg: LmEvalConfig, *, device: str = "cpu", batch_size: int = 8) -> dict:
    """Run `cfg.tasks` on one model (base + optional peft adapter) and return {task: {metric: value}}.

    Raises ConfigError with the install command when lm-evaluation-harness is missing, and
    HonedError naming the task when its data is not available locally.
    """
    if not cfg.tasks:
        return {}
    if not lm_eval_available():
        raise ConfigError("lm_eval.tasks is set but lm-evaluation-harness is not installed; "
                          "pip install lm-eval (and put the tasks' datasets in the local cache), "
                          "or remove lm_eval.tasks from the eval config")
    from lm_eval import simple_evaluate

    model_args = f"pretrained={spec.model_path}"
    if spec.adapter:
        model_args += f",peft={spec.adapter}"
    try:
        out = simple_evaluate(model="hf", model_args=model_args, tasks=list(cfg.tasks), limit=cfg.limit,
                              num_fewshot=cfg.num_fewshot, device=device, batch_size=batch_size)
    except Exception as err:  # the harness raises many types; say which tasks and why
        raise HonedError(f"lm_eval tasks {cfg.tasks} failed for {spec.name}: {err}. The task data must be "
                         "available offline (HF_DATASETS_OFFLINE=1 with a filled cache)") from err
    return _numbers_only(out.get("results", {}))
