"""The sweep driver shared by `honed sweep` and `honed merge --sweep`: build order, what an earlier run
finished is skipped, evaluation per point or all at once, and the outputs written."""

from __future__ import annotations

import logging

from honed.eval.sweep_driver import SweepStep, run_steps, write_outputs


def steps_recording(events: list, built: dict[str, bool], earlier: dict[str, object]) -> list[SweepStep]:
    return [SweepStep(name, lambda name=name: events.append(("build", name)), built=built.get(name, False),
                      earlier_result=lambda name=name: earlier.get(name), detail=f"p={name}") for name in ("a", "b", "c")]


def evaluate_recording(events: list):
    def evaluate(chosen):
        events.append(("evaluate", [s.name for s in chosen]))
        return {s.name: f"eval of {s.name}" for s in chosen}
    return evaluate


def test_per_point_evaluates_after_each_build_and_reuses_what_an_earlier_run_finished(caplog):
    events = []
    # a: finished before (model and report); b: model built but its evaluation missing; c: new
    steps = steps_recording(events, built={"a": True, "b": True}, earlier={"a": "saved report of a"})
    with caplog.at_level(logging.INFO, logger="honed.test_sweep"):
        results = run_steps(steps, evaluate_recording(events), per_point=True, verb="training",
                            logger=logging.getLogger("honed.test_sweep"))
    assert events == [("evaluate", ["b"]), ("build", "c"), ("evaluate", ["c"])]
    assert results == {"a": "saved report of a", "b": "eval of b", "c": "eval of c"}
    assert [r.getMessage() for r in caplog.records] == [
        "[1/3] a: training skipped (done)", "[1/3] a: evaluation skipped (done)",
        "[2/3] b: training skipped (done)", "[3/3] c: training (p=c)"]


def test_all_at_once_builds_every_model_first_then_evaluates_them_together():
    events = []
    steps = steps_recording(events, built={"b": True}, earlier={"b": "never read"})
    results = run_steps(steps, evaluate_recording(events), per_point=False)
    assert events == [("build", "a"), ("build", "c"), ("evaluate", ["a", "b", "c"])]
    assert results == {"a": "eval of a", "b": "eval of b", "c": "eval of c"}


def test_outputs_are_written_then_plotted(tmp_path):
    plotted = []
    out = tmp_path / "new" / "sweep"
    write_outputs(out, {"sweep.json": '{"points": []}', "sweep.csv": "point\n"}, plotted.append)
    assert (out / "sweep.json").read_text() == '{"points": []}' and (out / "sweep.csv").read_text() == "point\n"
    assert plotted == [out / "sweep.png"]
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json"]  # no temporary files left
