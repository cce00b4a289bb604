"""The one driver behind honed's sweeps (`honed sweep` and `honed merge --sweep`).

A sweep builds one model per point (a training run, an interpolation at one alpha), evaluates the
models with `honed eval`, and writes its files. What a point builds and how its models are evaluated
are the caller's; the order, the skipping of what an earlier run finished, the log lines and the
atomic writing of the outputs are here, once:

- `per_point=True`: each point is evaluated right after it is built, so an interrupted sweep keeps
  every finished point (`honed sweep`: one report per point, resumed where it stopped);
- `per_point=False`: every point is built first and one evaluation compares them all (`honed merge
  --sweep`: one report with alpha 0 as the baseline).

>>> built = []
>>> steps = [SweepStep("a", lambda: built.append("a")), SweepStep("b", lambda: built.append("b"), built=True)]
>>> run_steps(steps, lambda chosen: {s.name: len(chosen) for s in chosen}, per_point=False)
{'a': 2, 'b': 2}
>>> built
['a']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from honed.utils.fs import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class SweepStep:
    """One point of a sweep.

    build: makes the point's model (skipped when `built`, i.e. an earlier run of the sweep made it).
    earlier_result: with `per_point`, the evaluation an earlier run saved for a built point, or None
    to evaluate it again.
    detail: what the log line says about the point (its overrides, its alpha).
    """

    name: str
    build: Callable[[], object]
    built: bool = False
    earlier_result: Callable[[], object | None] = lambda: None
    detail: str = ""


def run_steps(steps: Sequence[SweepStep], evaluate: Callable[[list[SweepStep]], dict[str, object]], *,
              per_point: bool, verb: str = "building", logger: logging.Logger | None = None) -> dict[str, object]:
    """Build every step's model in order, evaluate them, and return {step name: its evaluation}.

    `evaluate(steps)` gets the steps to evaluate and returns their results by name: one step at a time
    after its build (`per_point=True`) or all of them once every model is built. `verb` names the
    building in the log (`training`, `interpolating`); `logger` is the caller's, so its log lines
    keep their source.
    """
    logger = logger or log
    results: dict[str, object] = {}
    total = len(steps)
    for i, step in enumerate(steps, 1):
        if step.built:
            logger.info("[%d/%d] %s: %s skipped (done)", i, total, step.name, verb)
        else:
            logger.info("[%d/%d] %s: %s%s", i, total, step.name, verb, f" ({step.detail})" if step.detail else "")
            step.build()
        if not per_point:
            continue
        earlier = step.earlier_result() if step.built else None
        if earlier is not None:
            logger.info("[%d/%d] %s: evaluation skipped (done)", i, total, step.name)
            results[step.name] = earlier
        else:
            results.update(evaluate([step]))
    if not per_point:
        results.update(evaluate(list(steps)))
    return results


def write_outputs(out: Path, texts: dict[str, str], plot: Callable[[Path], object] | None = None,
                  plot_name: str = "sweep.png") -> None:
    """Write the sweep's text files (name → content) atomically into `out`, then its plot, if any."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text_atomic(out / name, text)
    if plot is not None:
        plot(out / plot_name)
