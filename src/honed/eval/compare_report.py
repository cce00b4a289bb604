"""How the A/B comparison (report["comparison"]) is shown: a rich table in the terminal and a
section of report.html.
"""

from __future__ import annotations

from html import escape


def _rows(report: dict):
    comparison = report.get("comparison") or {}
    for name, metrics in (comparison.get("models") or {}).items():
        for key, r in metrics.items():
            yield name, key, r


def _p(p) -> str:
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def comparison_table(report: dict):
    """A rich Table (or None): per model and metric, the difference, its CI, p-value, win/tie/loss."""
    from rich.table import Table

    comparison = report.get("comparison")
    if not comparison or not comparison.get("models"):
        return None
    pct = round(comparison["confidence"] * 100)
    table = Table(title=f"A/B vs {comparison['baseline']}: paired bootstrap {pct}% CI, paired test", title_justify="left")
    for col in ("model", "metric", "A", "B", f"Δ [{pct}% CI]", "test", "p", "win/tie/loss"):
        table.add_column(col, justify="left" if col in ("model", "metric", "test") else "right")
    for name, _, r in _rows(report):
        good = (r["diff"] > 0) == r["higher_is_better"]
        style = "" if not r["significant"] else ("green" if good else "red")
        delta = f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        table.add_row(name, r["label"], f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}", f"[{style}]{delta}[/]" if style else delta,
                      r["test"], _p(r["p_value"]), f"{r['wins']}/{r['ties']}/{r['losses']}")
    return table


def comparison_html(report: dict) -> str:
    """The report.html section, or '' when there is no comparison."""
    comparison = report.get("comparison")
    if not comparison or not comparison.get("models"):
        return ""
    pct = round(comparison["confidence"] * 100)
    rows = []
    for name, _, r in _rows(report):
        cls = "" if not r["significant"] else ("better" if (r["diff"] > 0) == r["higher_is_better"] else "worse")
        rows.append(f"<tr><td>{escape(name)}</td><td>{escape(r['label'])} {'↑' if r['higher_is_better'] else '↓'}</td>"
                    f"<td class='num'>{r['n']}</td><td class='num'>{r['mean_a']:.4f}</td><td class='num'>{r['mean_b']:.4f}</td>"
                    f"<td class='num {cls}'>{r['diff']:+.4f}</td><td class='num'>[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]</td>"
                    f"<td>{escape(r['test'])}</td><td class='num'>{_p(r['p_value'])}</td>"
                    f"<td class='num'>{r['wins']} / {r['ties']} / {r['losses']}</td></tr>")
    return (f"<h2>A/B comparison against {escape(comparison['baseline'])}</h2><p class='meta'>Paired by sample: Δ = model − "
            f"{escape(comparison['baseline'])}, {pct}% percentile interval from {comparison['n_resamples']} bootstrap resamples of the "
            f"samples (seed {comparison['seed']}). Test: McNemar's exact test for 0/1 outcomes, Wilcoxon signed-rank for graded "
            f"scores; coloured where p &lt; {comparison['alpha']}. Win/tie/loss counts samples where the model is better/equal/worse.</p>"
            "<table><tr><th>model</th><th>metric</th><th>n</th><th>model</th><th>baseline</th><th>Δ</th>"
            f"<th>{pct}% CI</th><th>test</th><th>p</th><th>win / tie / loss</th></tr>{''.join(rows)}</table>")
