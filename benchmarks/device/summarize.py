"""The one-line summaries `session.sh` prints for its parts (plain python3 there: no honed import).

    python3 benchmarks/device/summarize.py results LOG        peer_bench's rows of the command last run into LOG
    python3 benchmarks/device/summarize.py matrix JSON GROUP   card_matrix.json's honed/Unsloth ratio a row, one group
    python3 benchmarks/device/summarize.py longest JSON CAP    longest_seq.json's longest fit and first failure a stack
"""

from __future__ import annotations

import json
import sys


def results(log_path: str) -> str:
    """peer_bench's per-stack JSON lines after the last command line (`$ ...`) of a part's log, one phrase each."""
    with open(log_path, errors="replace") as f:
        lines = f.read().splitlines()
    last = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1)
    out = []
    for line in lines[last + 1:]:
        if line.startswith("== ") and (" failed " in line or " timed out " in line):
            out.append(line[3:].split(" (rc=")[0].replace("cmd:python3 -m honed bench", "honed"))
        try:
            row = json.loads(line) if line.startswith("{") else None
        except ValueError:
            row = None
        if not row or "tokens_per_s" not in row:
            continue
        name = " ".join(str(row[k]) for k in ("stack", "precision", "memory") if row.get(k) and (k == "stack" or row["stack"] == "honed"))
        text = f"{name} {row['tokens_per_s']:,.0f} tok/s {row.get('peak_alloc_gib')} GiB"
        if row.get("fp8_choice"):
            choice = row["fp8_choice"]
            text += f" (fp8_choice: {choice.get('bases')} bases, est. ms {choice.get('estimated_step_ms')})"
        if row.get("host_mlp_layers"):
            text += f" (host_mlp {row['host_mlp_layers']}, {row.get('recomputed_layers')} recomputed)"
        out.append(text)
    return "; ".join(out) or "no result"


def _section(json_path: str, *keys: str):
    """The part of a results file under `keys`, or None where the file or the part is missing."""
    try:
        with open(json_path) as f:
            found = json.load(f)
        for key in keys:
            found = found[key]
    except (OSError, KeyError, ValueError):
        return None
    return found


def matrix(json_path: str, group: str) -> str:
    """Each row's honed/Unsloth ratio (and the stacks that failed) in one group of card_matrix.json."""
    rows = _section(json_path, "groups", group, "rows")
    if rows is None:
        return "no card_matrix.json"

    def tokens_per_s(result):
        return None if not result or result.get("error") else result.get("effective_tokens_per_s", result.get("tokens_per_s"))

    out = []
    for row, stacks in rows.items():
        honed = tokens_per_s(stacks.get("honed"))
        unsloth = max(filter(None, (tokens_per_s(stacks.get(s)) for s in ("unsloth", "unsloth-padded"))), default=None)
        errors = [f"{s} {r['error']}" for s, r in stacks.items() if r.get("error")]
        out.append(f"{row} " + (f"honed/Unsloth {honed / unsloth:.2f}x" if honed and unsloth else "no ratio")
                   + (f" ({', '.join(errors)})" if errors else ""))
    return "; ".join(out)


def longest(json_path: str, cap: str) -> str:
    """Each stack's longest fitting length and its first failure under one cap of longest_seq.json."""
    stacks = _section(json_path, "caps", cap, "stacks")
    if stacks is None:
        return "no probe saved (none fitted in the time left: see longest.log)"
    out = []
    for stack, probes in stacks.items():
        fits = [int(n) for n, r in probes.items() if not r.get("error")]
        fails = [int(n) for n, r in probes.items() if r.get("error")]
        out.append(f"{stack} fits " + (f"{max(fits):,}" if fits else "none")
                   + (f", fails {min(fails):,} ({probes[str(min(fails))]['error']})" if fails else ""))
    return "; ".join(out)


if __name__ == "__main__":
    print({"results": results, "matrix": matrix, "longest": longest}[sys.argv[1]](*sys.argv[2:]))
