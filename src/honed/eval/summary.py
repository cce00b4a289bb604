"""The terminal summary: one rich table, a column per model and a Δ column per model against
the baseline (green where it is better, red where it is worse).

>>> print_summary(result.report, Console())   # doctest: +SKIP
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _cell(value, key: str) -> str:
    if value is None:
        return "—"
    if key.endswith("_mb") or abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4f}"


def summary_table(report: dict) -> Table:
    """A rich Table of the report's headline metrics."""
    models, labels = report["models"], report["metric_labels"]
    baseline, deltas = report.get("baseline"), report.get("deltas") or {}
    table = Table(title=f"honed eval: {report['evaluated']}" + (f" vs {baseline}" if baseline else ""),
                  title_justify="left")
    table.add_column("metric")
    for m in models:
        table.add_column(m["name"], justify="right")
    delta_models = [m["name"] for m in models if m["name"] in deltas]
    for name in delta_models:
        table.add_column(f"Δ {name}", justify="right")
    for key, meta in labels.items():
        if not any(key in m["summary"] for m in models):
            continue
        row = [f"{meta['label']} {'↑' if meta['higher_is_better'] else '↓'}"]
        row += [_cell(m["summary"].get(key), key) for m in models]
        for name in delta_models:
            d = deltas[name].get(key)
            if d is None:
                row.append("—")
                continue
            good = (d > 0) == meta["higher_is_better"]
            style = "" if abs(d) < 1e-12 else ("green" if good else "red")
            text = f"{d:+,.1f}" if abs(d) >= 100 or key.endswith("_mb") else f"{d:+.4f}"
            row.append(f"[{style}]{text}[/]" if style else text)
        table.add_row(*row)
    return table


def print_summary(report: dict, console: Console | None = None, output_dir=None) -> None:
    """The table, the fitting verdict, per-sample problem counts, and where the files are."""
    console = console or Console()
    console.print(summary_table(report))
    from honed.eval.compare_report import comparison_table

    if (ab := comparison_table(report)) is not None:
        console.print(ab)
    fitting = report.get("fitting")
    if fitting:
        colour = {"overfitting": "red", "diverging": "red", "underfitting": "yellow", "good_fit": "green"}.get(fitting.get("diagnosis"), "yellow")
        console.print(f"[{colour}]fitting:[/] {fitting['verdict']}")
    problems = report["data"]["problems"]
    if problems:
        console.print("per-sample data problems: " + ", ".join(f"{k} × {v}" for k, v in problems.items()))
    if output_dir is not None:
        console.print(f"report: {output_dir}/report.html · {output_dir}/report.json · {output_dir}/predictions.jsonl")
