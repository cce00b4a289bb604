"""`honed data stats`: one self-contained HTML page about a data set (plots inlined as base64 PNGs).

It shows counts, languages, the duplication rate (exact and near duplicates, as `honed data
filter` would find them), length histograms of prompts and answers (characters, and tokens when
a tokenizer is given), the balance of labels/categories, which transforms made the augmented
samples, and original and augmented samples side by side.

>>> from honed.data import Conversation, Message
>>> data = [Conversation([Message("user", "好看吗"), Message("assistant", "积极")], meta={"label": "positive"})]
>>> stats = compute_stats(data)
>>> stats["n"], stats["labels"]["label"]
(1, {'positive': 1})
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter

from honed.data.conversation import Conversation
from honed.data.quality.filter import DedupConfig, FilterConfig, RulesConfig, filter_conversations
from honed.data.quality.rules import detect_language, sample_text

BALANCE_KEYS = ("label", "kind", "category", "task", "type", "split")  # always charted when present
# Any other field is charted when it looks categorical: short scalar values, a few distinct ones,
# some repeated. Bookkeeping fields honed writes itself are left out.
NOT_BALANCE = {"augmentations", "augmented_from", "hard_negative_of", "boundary_of", "negative_of", "input", "id", "protected"}
MAX_CATEGORIES = 20
MAX_PAIRS = 12


def balance_keys(convs: list[Conversation]) -> list[str]:
    """The meta keys to chart: BALANCE_KEYS present, then other categorical fields, in first-seen order."""
    seen = list(dict.fromkeys(k for c in convs for k in c.meta if not k.startswith("_") and k not in NOT_BALANCE))
    known = [k for k in BALANCE_KEYS if k in seen]
    extra = []
    for key in seen:
        if key in BALANCE_KEYS:
            continue
        values = [c.meta[key] for c in convs if c.meta.get(key) is not None]
        if not values or not all(isinstance(v, (str, int, bool)) and len(str(v)) <= 40 for v in values):
            continue
        distinct = len(set(map(str, values)))
        if 2 <= distinct <= MAX_CATEGORIES and distinct < len(values):
            extra.append(key)
    return known + extra


def length_summary(values: list[int]) -> dict:
    """min / mean / p50 / p90 / p99 / max of a list of lengths (nearest-rank percentiles)."""
    if not values:
        return {}
    ordered = sorted(values)
    rank = lambda q: ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))]  # noqa: E731
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 2), "p50": rank(50), "p90": rank(90),
            "p99": rank(99), "max": ordered[-1]}


def compute_stats(convs: list[Conversation], tokenizer=None) -> dict:
    """Numbers behind the page (also what `--json` prints)."""
    prompts = [len(sample_text(c, "prompt")) for c in convs]
    answers = [len(sample_text(c, "answer")) for c in convs]
    dup = filter_conversations(convs, FilterConfig(rules=RulesConfig(), dedup=DedupConfig())).counts()
    n = max(len(convs), 1)
    out = {
        "n": len(convs),
        "prompt_chars": prompts, "answer_chars": answers,
        "languages": dict(Counter(detect_language(sample_text(c)) or "none" for c in convs).most_common()),
        "exact_duplicates": dup.get("exact_duplicate", 0), "near_duplicates": dup.get("near_duplicate", 0),
        "duplication_rate": (dup.get("exact_duplicate", 0) + dup.get("near_duplicate", 0)) / n,
        "labels": {k: dict(Counter(str(c.meta[k]) for c in convs if c.meta.get(k) is not None).most_common())
                   for k in balance_keys(convs)},
        "transforms": dict(Counter(a["name"] for c in convs for a in c.meta.get("augmentations", [])
                                   if isinstance(a, dict) and "name" in a).most_common()),
        "turns": dict(Counter(len(c.messages) for c in convs).most_common()),
    }
    if tokenizer is not None:
        out["tokens"] = [len(tokenizer.encode(sample_text(c), add_special_tokens=False)) for c in convs]
    # The histograms' numbers in a form JSON readers can use without the per-sample lists.
    out["lengths"] = {m: length_summary(out[m]) for m in ("prompt_chars", "answer_chars", "tokens") if m in out}
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # CJK labels need a font that has them; fall back silently to the default where none is installed.
    plt.rcParams["font.sans-serif"] = ["Noto Sans CJK SC", "WenQuanYi Micro Hei", "SimHei", "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def length_histograms(series: dict[str, dict[str, list[int]]]) -> str:
    """One panel per measure; each panel overlays the data sets (original, augmented)."""
    plt = _plt()
    measures = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 3.2))
    axes = [axes] if len(measures) == 1 else axes
    for ax, measure in zip(axes, measures):
        values = [v for s in series.values() for v in s[measure]] or [0]
        bins = min(30, max(5, len(set(values))))
        for name, s in series.items():
            ax.hist(s[measure], bins=bins, range=(min(values), max(values) + 1), alpha=0.55, label=f"{name} (n={len(s[measure])})")
        ax.set_title(measure.replace("_", " "))
        ax.set_xlabel("length")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    return _png(fig)


def balance_chart(counts: dict[str, dict[str, int]]) -> str:
    """Bars of each value's share, side by side per data set."""
    plt = _plt()
    keys = sorted({k for c in counts.values() for k in c})
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(keys) + 2), 3.2))
    width = 0.8 / max(len(counts), 1)
    for j, (name, c) in enumerate(counts.items()):
        total = sum(c.values()) or 1
        ax.bar([i + j * width for i in range(len(keys))], [c.get(k, 0) / total for k in keys], width, label=name)
    ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels(keys, rotation=30, ha="right")
    ax.set_ylabel("share")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return _png(fig)


def _table(rows: list[tuple], head: tuple) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{cells}</table>"


def _render_conv(conv: Conversation) -> str:
    return "".join(f'<div class="msg {m.role}"><b>{m.role}</b><pre>{html.escape(m.content)}</pre></div>' for m in conv.messages)


def pair_up(original: list[Conversation], augmented: list[Conversation]) -> list[tuple[Conversation, Conversation]]:
    """(original, augmented) pairs: by `meta["augmented_from"]` (written by `honed data augment`)."""
    by_source = {c.source: c for c in original}
    pairs = []
    for a in augmented:
        src = a.meta.get("augmented_from")
        if src in by_source and a.meta.get("augmentations"):
            pairs.append((by_source[src], a))
    return pairs


CSS = """body{font-family:system-ui,-apple-system,'Noto Sans CJK SC',sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3}.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:10px 0;border:1px solid #ddd;padding:8px}
.msg pre{white-space:pre-wrap;margin:2px 0 6px;font-size:12px}.msg b{font-size:11px;color:#666}
.user{background:#f7fbff}.assistant{background:#f6fff6}.system{background:#fafafa}.tag{color:#a50;font-size:12px}"""


def render_html(original: list[Conversation], augmented: list[Conversation] | None = None, *, tokenizer=None,
                title: str = "honed data stats", max_pairs: int = MAX_PAIRS) -> str:
    """The whole page as a string (no external files, scripts or fonts)."""
    sets = {"original": original, **({"augmented": augmented} if augmented else {})}
    stats = {name: compute_stats(convs, tokenizer) for name, convs in sets.items()}
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>"]
    rows = [("samples", *[s["n"] for s in stats.values()]),
            ("languages", *[", ".join(f"{k} {v}" for k, v in s["languages"].items()) for s in stats.values()]),
            ("exact duplicates", *[s["exact_duplicates"] for s in stats.values()]),
            ("near duplicates (Jaccard ≥ 0.8)", *[s["near_duplicates"] for s in stats.values()]),
            ("duplication rate", *[f"{s['duplication_rate']:.1%}" for s in stats.values()]),
            ("turns per sample", *[", ".join(f"{k}: {v}" for k, v in s["turns"].items()) for s in stats.values()])]
    body.append(_table(rows, ("", *stats)))
    measures = ("prompt_chars", "answer_chars") + (("tokens",) if tokenizer is not None else ())
    body += ["<h2>Lengths</h2>", length_histograms({n: {m: s[m] for m in measures} for n, s in stats.items()})]
    for key in sorted({k for s in stats.values() for k in s["labels"]}):
        counts = {n: s["labels"].get(key, {}) for n, s in stats.items()}
        body += [f"<h2>Balance: {html.escape(key)}</h2>", balance_chart(counts),
                 _table([(v, *[c.get(v, 0) for c in counts.values()]) for v in sorted({v for c in counts.values() for v in c})],
                        (key, *counts))]
    if augmented:
        tr = stats["augmented"]["transforms"]
        body += ["<h2>Transforms in the augmented set</h2>", _table(sorted(tr.items(), key=lambda x: -x[1]), ("transform", "samples"))]
        pairs = pair_up(original, augmented)[:max_pairs]
        body.append(f"<h2>Original vs augmented ({len(pairs)} shown)</h2>")
        for o, a in pairs:
            names = ", ".join(x.get("name", "?") for x in a.meta.get("augmentations", []))
            body.append(f'<div class="tag">{html.escape(o.source)} → {html.escape(names)}</div>'
                        f'<div class="pair"><div>{_render_conv(o)}</div><div>{_render_conv(a)}</div></div>')
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
