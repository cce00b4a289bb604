"""benchmarks/scaling.py's pure parts: summarising a run's ranks, parsing a peer's RESULT line,
scaling efficiency, honed/peer ratios, merging result files and the markdown table. No GPU, no torch.

Every run becomes one record (a dict) with at least:

  stack        "honed" or a peer ("hf-accelerate")
  workload     "lora", "qlora" or "full";  strategy "ddp" or "fsdp";  offload True/False
  world        processes (= GPUs);  nnodes  torchrun node groups (2: the emulated two-host run)
  tokens_per_s total over every rank;  tokens_per_s_per_gpu  = tokens_per_s / world
  peak_alloc_gib_per_rank  one value per rank (torch.cuda.max_memory_allocated), None on the CPU
  losses       the loss of every optimizer step (rank 0's view: already reduced over ranks)
  call         {device, date, commit, call_id} of the device call that produced it

>>> scaling_efficiency(30_000, 4, 8_000)
0.9375
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

BAR = 0.90  # issue 20: scaling at or above 90% of linear
ROW_KEYS = ("shape", "workload", "strategy", "offload", "world", "nnodes")  # what a honed row and its peer row share
PEER_STACK = "hf-accelerate"


class ResultError(ValueError):
    """A run's output could not be read as a result (a RESULT line or a rank's record is missing or wrong)."""


# ---- one run ------------------------------------------------------------------------------------


def parse_result_line(output: str, *, where: str = "output") -> dict:
    """The JSON of the last `RESULT {...}` line in a process's output (a peer prints one, on rank 0)."""
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise ResultError(f"{where}: no 'RESULT {{json}}' line (the run failed before it finished; see its log)")
    try:
        result = json.loads(lines[-1][len("RESULT "):])
    except json.JSONDecodeError as err:
        raise ResultError(f"{where}: the RESULT line is not JSON ({err})") from None
    missing = [k for k in ("tokens_per_s", "world", "peak_alloc_gib_per_rank") if k not in result]
    if missing:
        raise ResultError(f"{where}: the RESULT line lacks {', '.join(missing)}")
    return result


def timed_throughput(steps: list[dict], warmup: int) -> dict:
    """Tokens/s over the steps after `warmup`: all their tokens over all their seconds (not a mean of
    per-step rates, which would over-weight fast steps). Each step: {"tokens", "seconds"}.

    >>> timed_throughput([{"tokens": 8, "seconds": 9.0}, {"tokens": 8, "seconds": 1.0}, {"tokens": 8, "seconds": 3.0}], 1)
    {'timed_steps': 2, 'tokens_per_s': 4.0, 'step_s': 2.0}
    """
    timed = steps[warmup:]
    if not timed:
        raise ResultError(f"no timed step: {len(steps)} step(s) ran, {warmup} of them warm-up")
    seconds = sum(s["seconds"] for s in timed)
    return {"timed_steps": len(timed), "tokens_per_s": round(sum(s["tokens"] for s in timed) / seconds, 1),
            "step_s": round(seconds / len(timed), 4)}


def summarise_ranks(rank_records: list[dict], *, warmup: int) -> dict:
    """One honed run's result from its ranks' records (benchmarks/scaling_rank.py writes one a rank).

    Tokens are already summed over the ranks by honed (each step's `tokens` is the global count) and
    every step ends in a collective, so rank 0's step seconds time the whole job; the other ranks'
    seconds are kept to show stragglers."""
    if not rank_records:
        raise ResultError("no rank wrote its record (the run failed before training; see its log)")
    by_rank = sorted(rank_records, key=lambda r: r["rank"])
    world = by_rank[0]["world_size"]
    if [r["rank"] for r in by_rank] != list(range(world)):
        raise ResultError(f"ranks {[r['rank'] for r in by_rank]} wrote records; expected 0..{world - 1}")
    failed = [r["rank"] for r in by_rank if r.get("rc", 0) != 0]
    if failed:
        raise ResultError(f"rank(s) {failed} exited with an error")
    main = by_rank[0]
    flow = timed_throughput(main["steps"], warmup)
    slowest = [max(r["steps"][i]["seconds"] for r in by_rank) for i in range(warmup, len(main["steps"]))]
    return {
        "world": world, **flow,
        "tokens_per_s_per_gpu": round(flow["tokens_per_s"] / world, 1),
        "peak_alloc_gib_per_rank": [r.get("peak_alloc_gib") for r in by_rank],
        "peak_reserved_gib_per_rank": [r.get("peak_reserved_gib") for r in by_rank],
        "step_s_slowest_rank": round(sum(slowest) / len(slowest), 4),
        "losses": [round(s["loss"], 5) for s in main["steps"]],
    }


def peak_gib(record: dict) -> float | None:
    """The largest per-GPU peak of a run (the card that must hold it); None on the CPU."""
    values = [v for v in record.get("peak_alloc_gib_per_rank") or [] if v is not None]
    return max(values) if values else None


# ---- across runs --------------------------------------------------------------------------------


def scaling_efficiency(tokens_per_s: float, world: int, base_tokens_per_s: float, base_world: int = 1) -> float:
    """Throughput against linear scaling from the base run: 1.0 is perfect, BAR (0.9) the issue's bar."""
    return tokens_per_s / (base_tokens_per_s * world / base_world)


def row_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ROW_KEYS)


def family_key(record: dict) -> tuple:
    """Rows that scale against each other: one stack, workload, strategy and offload, one node group."""
    return (record["stack"], record.get("shape"), record["workload"], record["strategy"], record["offload"])


def annotate(records: list[dict]) -> list[dict]:
    """Each record with `efficiency` (against the smallest world of its family on one node group:
    the 1-GPU run where there is one), `efficiency_base_world`, and, on honed rows, `ratio_to_peer`
    (honed tokens/s over the peer's of the same row) and `peer_same_call`."""
    out = [dict(r) for r in records]
    bases: dict[tuple, dict] = {}
    for r in out:
        if r.get("nnodes", 1) == 1 and r.get("tokens_per_s"):
            key = family_key(r)
            if key not in bases or r["world"] < bases[key]["world"]:
                bases[key] = r
    peers = {row_key(r): r for r in out if r["stack"] == PEER_STACK}
    for r in out:
        base = bases.get(family_key(r))
        if base is not None and r.get("tokens_per_s") and base is not r and r.get("nnodes", 1) == 1:
            r["efficiency"] = round(scaling_efficiency(r["tokens_per_s"], r["world"], base["tokens_per_s"], base["world"]), 4)
            r["efficiency_base_world"] = base["world"]
        peer = peers.get(row_key(r))
        if r["stack"] == "honed" and peer is not None and peer.get("tokens_per_s"):
            r["ratio_to_peer"] = round(r["tokens_per_s"] / peer["tokens_per_s"], 3)
            r["peer_same_call"] = (r.get("call") or {}).get("call_id") == (peer.get("call") or {}).get("call_id")
    return out


def merge(result_sets: list[dict]) -> dict:
    """Several result files (each {"runs": [...], "checks": [...]}) as one. Of two runs of the same
    stack and row the one from the later call (its date) stays; on equal dates, the later file's."""
    runs: dict[tuple, dict] = {}
    checks: dict[tuple, dict] = {}
    every = [r for results in result_sets for r in results.get("runs", [])]
    for r in sorted(every, key=lambda r: (r.get("call") or {}).get("date", "")):  # stable: file order within a date
        runs[(r["stack"], *row_key(r))] = r
    for results in result_sets:
        for c in results.get("checks", []):
            checks[(c["check"], c.get("world"))] = c
    return {"runs": list(runs.values()), "checks": list(checks.values())}


def load_results(path: str | os.PathLike) -> dict:
    """A results file as written by `write_results`; an absent file is an empty set."""
    path = Path(path)
    if not path.exists():
        return {"runs": [], "checks": []}
    return json.loads(path.read_text())


def write_results(path: str | os.PathLike, results: dict) -> None:
    """Write atomically (temp file, then rename), so a call cut short leaves the last whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, path)


# ---- the table ----------------------------------------------------------------------------------


def _num(value, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _setup(r: dict) -> str:
    text = r["strategy"] + (" + CPU offload" if r.get("offload") else "")
    return text + (f", {r['nnodes']} node groups (c10d)" if r.get("nnodes", 1) > 1 else "")


def markdown_table(results: dict) -> str:
    """The BENCHMARKS.md table: one line per row (workload, strategy, GPUs), honed then its peer."""
    records = annotate(results["runs"])
    calls = sorted({json.dumps(r["call"], sort_keys=True) for r in records if r.get("call")})
    lines = []
    for text in calls:
        c = json.loads(text)
        lines.append(f"- call `{c.get('call_id')}`: {c.get('device')}, {c.get('date')}, commit `{c.get('commit')}`")
    lines += ["", "| workload | strategy | GPUs | honed tok/s | per GPU | scaling | GiB/GPU | peer tok/s | per GPU | scaling | GiB/GPU | honed/peer |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    peers = {row_key(r): r for r in records if r["stack"] == PEER_STACK}
    honed = {row_key(r): r for r in records if r["stack"] == "honed"}
    order = {"lora": 0, "qlora": 1, "full": 2}
    for key in sorted(set(honed) | set(peers), key=lambda k: (str(k[0]), order.get(k[1], 9), k[2], bool(k[3]), k[5] or 1, k[4])):
        h, p = honed.get(key, {}), peers.get(key, {})
        first = h or p
        ratio = h.get("ratio_to_peer")
        ratio_text = "–" if ratio is None else f"{ratio:.2f}×" + ("" if h.get("peer_same_call") else " (other call)")
        lines.append(" | ".join(["", f"{first.get('shape')} {first['workload']}", _setup(first), str(first["world"]),
                                 _num(h.get("tokens_per_s")), _num(h.get("tokens_per_s_per_gpu")), _efficiency_text(h),
                                 _num(peak_gib(h) if h else None, "{:.2f}"),
                                 _num(p.get("tokens_per_s")), _num(p.get("tokens_per_s_per_gpu")), _efficiency_text(p),
                                 _num(peak_gib(p) if p else None, "{:.2f}"), ratio_text, ""]).strip())
    for c in results.get("checks", []):
        lines.append("")
        lines.append(f"- {c['check']} ({c.get('world')} GPUs): {'same losses' if c.get('passed') else 'LOSSES DIFFER'} "
                     f"over {c.get('steps')} steps, largest difference {c.get('max_abs_diff')}")
    return "\n".join(lines) + "\n"


def _efficiency_text(r: dict) -> str:
    eff = r.get("efficiency")
    if eff is None:
        return "–"
    mark = "" if eff >= BAR else " ✗"
    base = r.get("efficiency_base_world", 1)
    return _pct(eff) + mark + ("" if base == 1 else f" vs {base}")


def loss_check(name: str, got: list[float], want: list[float], *, world: int, rel_tol: float = 2e-3) -> dict:
    """Do two runs' per-step losses agree (the two-node-group run against one group)?

    >>> loss_check("x", [1.0, 2.002], [1.0, 2.0], world=2)["passed"]
    True
    """
    if len(got) != len(want) or not want:
        return {"check": name, "world": world, "steps": len(want), "passed": False, "max_abs_diff": None,
                "why": f"{len(got)} steps against {len(want)}"}
    diffs = [abs(a - b) for a, b in zip(got, want)]
    passed = all(d <= rel_tol * max(abs(b), 1e-12) for d, b in zip(diffs, want))
    return {"check": name, "world": world, "steps": len(want), "passed": passed, "max_abs_diff": round(max(diffs), 6)}
