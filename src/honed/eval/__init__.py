"""Evaluation: pure metric functions (`honed.eval.metrics`), the runner, and the report.

>>> # from honed.eval import evaluate, load_eval_config
>>> result = evaluate(load_eval_config("eval.yaml"))   # doctest: +SKIP
>>> result.report["deltas"]                            # doctest: +SKIP

Heavy modules (torch, transformers, matplotlib) load only when these names are first used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "honed.eval.config",
    "load_eval_config": "honed.eval.config",
    "eval_config_from_dict": "honed.eval.config",
    "evaluate": "honed.eval.runner",
    "EvalResult": "honed.eval.runner",
    "analyse_fitting": "honed.eval.fitting",
    "run_fitting": "honed.eval.fitting",
    "render_html": "honed.eval.html",
    "print_summary": "honed.eval.summary",
    "SCHEMA_VERSION": "honed.eval.report",
    "paired_comparison": "honed.eval.compare",
    "cross_validate": "honed.eval.crossval",
    "run_sweep": "honed.eval.sweep",
    "parse_grid": "honed.eval.sweep",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'honed.eval' has no attribute {name!r}")
