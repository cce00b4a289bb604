"""report.html: one self-contained page (inline CSS, plots as base64 PNG) a person can read
offline — e-mailed, attached to a ticket, opened from a shared drive.

>>> Path("report.html").write_text(render_html(report, prediction_rows))   # doctest: +SKIP
"""

from __future__ import annotations

from html import escape

from honed.eval import plots
from honed.eval.compare_report import comparison_html

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,'Noto Sans','Noto Sans CJK SC','PingFang SC',sans-serif;
 color:#1d2330;margin:0;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:30px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#5b6475;font-size:13px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}.muted{color:#8a93a3}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 14px;margin:10px 0}
.flag{background:#fdecea;border-color:#f3b8b2}.ok{background:#e8f5e9;border-color:#b7dfb9}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs img{background:#fff;border:1px solid #dde1e7;max-width:100%}
.samples td{max-width:330px;word-wrap:break-word}.err{color:#b3261e;font-size:12px}
.tag{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;background:#eef1f5;margin-left:4px}
.tag.refused{background:#fde7c8}.tag.answered{background:#dcebfb}
details summary{cursor:pointer;color:#3366cc;margin:6px 0}
"""


def _fmt(value, key: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key.endswith("_mb"):
            return f"{value:,.1f}"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return escape(str(value))


def _img(png: str | None, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{png}">' if png else ""


def _summary_table(report: dict) -> str:
    models = report["models"]
    labels = report["metric_labels"]
    baseline, deltas = report.get("baseline"), report.get("deltas") or {}
    keys = [k for k in labels if any(k in m["summary"] for m in models)]
    delta_models = [m["name"] for m in models if m["name"] in deltas]
    head = "".join(f"<th>{escape(m['name'])}<br><span class='muted'>{escape(m['role'])}</span></th>" for m in models)
    head += "".join(f"<th>Δ {escape(n)}<br><span class='muted'>vs {escape(baseline)}</span></th>" for n in delta_models)
    rows = []
    for key in keys:
        higher = labels[key]["higher_is_better"]
        cells = "".join(f"<td class='num'>{_fmt(m['summary'].get(key), key)}</td>" for m in models)
        for name in delta_models:
            d = deltas[name].get(key)
            cls = "" if d is None or abs(d) < 1e-12 else ("better" if (d > 0) == higher else "worse")
            text = "—" if d is None else f"{d:+.4f}" if abs(d) < 100 else f"{d:+,.1f}"
            cells += f"<td class='num {cls}'>{text}</td>"
        arrow = "↑" if higher else "↓"
        rows.append(f"<tr><th>{escape(labels[key]['label'])} <span class='muted'>{arrow}</span></th>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _fitting(report: dict) -> str:
    f = report.get("fitting")
    parts = []
    if f:
        cls = "ok" if f.get("diagnosis") == "good_fit" else "flag"
        best = f" Best weights: <code>{escape(f['best_checkpoint'])}</code>." if f.get("best_checkpoint") else ""
        parts.append(f"<div class='card {cls}'><b>Verdict.</b> {escape(f['verdict'])}.{best}"
                     f"<br><span class='muted'>run: {escape(f.get('run_dir', ''))}</span></div>")
        parts.append(f"<div class='figs'>{_img(plots.loss_curves(f), 'training and validation loss')}</div>")
    curve = report.get("learning_curve")
    if curve:
        parts.append("<h3>Learning curve across checkpoints</h3>")
        parts.append(f"<div class='figs'>{_img(plots.learning_curve(curve), 'learning curve')}</div>")
        keys = [k for k in ("loss", "perplexity", "rougeL", "chrf", "accuracy", "refusal_recall") if any(k in p for p in curve)]
        rows = "".join("<tr>" + f"<td class='num'>{p['step']}</td>" + "".join(
            f"<td class='num'>{_fmt(p.get(k))}</td>" for k in keys) + "</tr>" for p in curve)
        parts.append("<table><tr><th>step</th>" + "".join(f"<th>{k}</th>" for k in keys) + f"</tr>{rows}</table>")
    if not parts:
        return ""
    return "<h2>Over- and under-fitting</h2>" + "".join(parts)


def _domain(report: dict) -> str:
    models = [m for m in report["models"] if m["metrics"].get("domain")]
    if not models:
        return ""
    rows = []
    for m in models:
        d = m["metrics"]["domain"]
        for split, v in d["per_split"].items():
            rows.append(f"<tr><td>{escape(m['name'])}</td><td>{escape(split)}</td><td class='num'>{v['n']}</td>"
                        f"<td class='num'>{v['answered']}</td><td class='num'>{v['refused']}</td>"
                        f"<td class='num'>{_fmt(v['answered_rate'])}</td><td class='num'>{_fmt(v['refused_rate'])}</td></tr>")
    figs = []
    for m in models:
        matrix = plots.domain_matrix(m["metrics"]["domain"])
        if matrix:
            figs.append(_img(plots.confusion_matrix(*matrix, title=f"{m['name']}: answered vs refused"), "domain matrix"))
    return ("<h2>Domain behaviour</h2><p class='meta'>Out- and near-domain questions should be refused, in-domain "
            "ones answered. Refusal precision/recall treat “should refuse” as the positive class.</p>"
            "<table><tr><th>model</th><th>split</th><th>n</th><th>answered</th><th>refused</th><th>answered rate</th>"
            f"<th>refused rate</th></tr>{''.join(rows)}</table><div class='figs'>{''.join(figs)}</div>")


def _refusal_probability(report: dict, predictions: list[dict]) -> str:
    """P(refuse) per split for models decoded with a refusal calibration (`eval --refusal-calibration`);
    empty when no prediction carries `refusal_probability`."""
    names = [m["name"] for m in report["models"]
             if any(p["models"].get(m["name"], {}).get("refusal_probability") is not None for p in predictions)]
    if not names:
        return ""
    cal = report.get("refusal_calibration") or {}
    threshold = cal.get("threshold")
    meta = (f"Threshold <b>{_fmt(threshold)}</b> · {cal.get('openings', '—')} refusal openings · applied to "
            f"<b>{escape(str(cal.get('applied_to', ', '.join(names))))}</b>"
            + (f" · <code>{escape(str(cal['file']))}</code>" if cal.get("file") else "") + ". ")
    rows, figs = [], []
    for name in names:
        by_split: dict[str, list[float]] = {}
        for p in predictions:
            value = p["models"][name].get("refusal_probability")
            if value is not None:
                by_split.setdefault(p.get("split") or "unmarked", []).append(value)
        for split, values in by_split.items():
            below = "—" if threshold is None else sum(v < threshold for v in values)
            rows.append(f"<tr><td>{escape(name)}</td><td>{escape(split)}</td><td class='num'>{len(values)}</td>"
                        f"<td class='num'>{_fmt(sum(values) / len(values))}</td><td class='num'>{below}</td></tr>")
        figs.append(_img(plots.refusal_probability_histogram(by_split, threshold, f"{name}: P(refuse) per split"),
                         f"P(refuse) histogram of {name}"))
    return ("<h2>Calibrated refusal decisions</h2><p class='meta'>" + meta + "P(refuse) is the probability of opening "
            "the reply with one of the training mix's refusal openings; below the threshold those openings are banned. "
            "Out- and near-domain questions should lie above it, in-domain ones below.</p>"
            "<table><tr><th>model</th><th>split</th><th>n</th><th>mean P(refuse)</th><th>below threshold (refusal banned)</th>"
            f"</tr>{''.join(rows)}</table><div class='figs'>{''.join(figs)}</div>")


def _classification(report: dict) -> str:
    models = [m for m in report["models"] if m["metrics"].get("classification")]
    if not models:
        return ""
    parts = ["<h2>Classification</h2>"]
    figs = []
    for m in models:
        c = m["metrics"]["classification"]
        rows = "".join(f"<tr><td>{escape(label)}</td><td class='num'>{_fmt(v['precision'])}</td><td class='num'>"
                       f"{_fmt(v['recall'])}</td><td class='num'>{_fmt(v['f1'])}</td><td class='num'>{v['support']}</td></tr>"
                       for label, v in c["per_class"].items())
        parts.append(f"<h3>{escape(m['name'])}</h3><p class='meta'>accuracy {_fmt(c['accuracy'])} · macro F1 "
                     f"{_fmt(c['macro']['f1'])} · AUC-ROC {_fmt(c.get('auc_roc'))} · {c['n_invalid']} answers outside "
                     f"the label set · {c['n_skipped']} skipped</p><table><tr><th>label</th><th>precision</th>"
                     f"<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>")
        figs.append(_img(plots.confusion_matrix(c["confusion_matrix"], c["labels"], c["labels"], m["name"]), "confusion matrix"))
    return "".join(parts) + f"<div class='figs'>{''.join(figs)}</div>"


def _efficiency(report: dict) -> str:
    rows = []
    for m in report["models"]:
        e, st = m["metrics"].get("efficiency") or {}, m["metrics"].get("stability") or {}
        lat = e.get("latency_s") or {}
        memory = e.get("peak_memory_bytes")
        size = e.get("size_on_disk_bytes")
        rows.append(f"<tr><td>{escape(m['name'])}</td><td class='num'>{_fmt(lat.get('p50'))}</td><td class='num'>"
                    f"{_fmt(lat.get('p95'))}</td><td class='num'>{_fmt(e.get('tokens_per_s'))}</td><td class='num'>"
                    f"{e.get('generated_tokens', '—')}</td><td class='num'>{_fmt(memory / 2**20 if memory else None, '_mb')}"
                    f" <span class='muted'>{escape(str(e.get('peak_memory_kind', '')))}</span></td><td class='num'>"
                    f"{_fmt(size / 2**20 if size is not None else None, '_mb')} <span class='muted'>{escape(str(e.get('size_of', '')))}"
                    f"</span></td><td class='num'>{_fmt(e.get('load_seconds'))}</td><td class='num'>"
                    f"{_fmt(st.get('decision_agreement'))}</td><td class='num'>{_fmt(st.get('greedy_identical_rate'))}</td></tr>")
    return ("<h2>Efficiency and stability</h2><table><tr><th>model</th><th>latency p50 (s)</th><th>p95 (s)</th>"
            "<th>tokens/s</th><th>tokens</th><th>peak memory (MB)</th><th>size on disk (MB)</th><th>load (s)</th>"
            f"<th>decision agreement</th><th>greedy identical</th></tr>{''.join(rows)}</table>")


def _general(report: dict) -> str:
    general = report.get("general_ability")
    if not general:
        return ""
    names = list(general)
    first = general[names[0]]
    rows = []
    for k, item in enumerate(first):
        cells = "".join(f"<td>{'✓' if general[n][k]['correct'] else '✗'} {escape(general[n][k]['answer'][:80])}</td>" for n in names)
        rows.append(f"<tr><td>{escape(item['question'])}</td><td>{escape(' / '.join(item['accepted']))}</td>{cells}</tr>")
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    return ("<h2>General ability (forgetting check)</h2><p class='meta'>Asked without the scope prompt; ✓ = the answer "
            "contains an accepted answer. A drop against the base is forgetting.</p><details open><summary>show the questions and answers</summary>"
            f"<table class='samples'><tr><th>question</th><th>accepted</th>{head}</tr>{''.join(rows)}</table></details>")


def _samples(predictions: list[dict], names: list[str], limit: int = 200) -> str:
    rows = []
    for p in predictions[:limit]:
        cells = []
        for name in names:
            e = p["models"][name]
            tag = "" if "refused" not in e else f"<span class='tag {'refused' if e['refused'] else 'answered'}'>{'refused' if e['refused'] else 'answered'}</span>"
            score = f"<br><span class='muted'>ROUGE-L {_fmt(e['rougeL'])}</span>" if "rougeL" in e else ""
            errs = "".join(f"<div class='err'>{escape(x)}</div>" for x in e.get("errors", []))
            cells.append(f"<td>{escape(e['answer'] or '')}{tag}{score}{errs}</td>")
        split = f"<span class='tag'>{escape(p['split'])}</span>" if p.get("split") else ""
        rows.append(f"<tr><td class='num'>{p['index']}</td><td>{escape(p['prompt'])}{split}</td>"
                    f"<td>{escape(p['reference'] or '—')}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    more = f"<p class='meta'>first {limit} of {len(predictions)}; all are in predictions.jsonl</p>" if len(predictions) > limit else ""
    return (f"<h2>Answers</h2><details open><summary>show {min(limit, len(predictions))} samples side by side</summary>{more}"
            f"<table class='samples'><tr><th>#</th><th>prompt</th><th>reference</th>{head}</tr>{''.join(rows)}</table></details>")


def render_html(report: dict, predictions: list[dict]) -> str:
    """The whole page as one string."""
    models = report["models"]
    names = [m["name"] for m in models]
    summaries = {m["name"]: m["summary"] for m in models}
    labels = {k: v["label"] for k, v in report["metric_labels"].items()}
    latencies = {n: [p["models"][n]["latency_s"] for p in predictions] for n in names}
    data = report["data"]
    problems = ", ".join(f"{escape(k)}: {v}" for k, v in data["problems"].items()) or "none"
    baseline = f" against <b>{escape(report['baseline'])}</b>" if report.get("baseline") else ""
    body = [
        f"<h1>honed evaluation report</h1><p class='meta'><b>{escape(report['evaluated'])}</b>{baseline} · "
        f"{data['n_samples']} samples from <code>{escape(str(data['path']))}</code> · splits "
        f"{escape(', '.join(f'{k} {v}' for k, v in data['splits'].items()))} · data problems: {problems} · "
        f"{escape(report['created'])} · honed {escape(report['honed_version'])}</p>",
        "<h2>Summary</h2>", _summary_table(report),
        "<p class='meta'>↑ higher is better, ↓ lower is better. Generation metrics are on in-domain references; "
        "BLEU/chrF are shown on a 0–1 scale. Latency is the wall time of the batch a request was in.</p>",
        f"<div class='figs'>{_img(plots.metric_bars(summaries, labels), 'metrics per model')}</div>",
        comparison_html(report), _fitting(report), _domain(report), _refusal_probability(report, predictions), _classification(report),
        _efficiency(report), f"<div class='figs'>{_img(plots.latency_histogram(latencies), 'latency histogram')}</div>",
        _general(report), _samples(predictions, names),
        f"<p class='meta'>schema {escape(report['schema'])} v{report['schema_version']} · full numbers in report.json</p>",
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>honed eval: "
            f"{escape(report['evaluated'])}</title><style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")
