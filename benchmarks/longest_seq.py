"""The longest sequence each stack trains: llama-8b QLoRA, batch 1, one optimizer step, found by search.

For each stack (Unsloth, honed `--memory offload`, honed's default) under a memory cap (or the full
card) it probes one training step at a length: doubling from --start while the step fits, then halving
the gap between the longest that fitted and the shortest that did not, down to --step tokens. Every
probe is one process (peer_bench.py with --steps 1 --warmup 0), so a failure cannot leak into the next.
A failure is an answer, and the table says which: OOM (the GPU), host (the process was killed: pinned
host memory ran out), timeout (the step took longer than --probe-timeout).

A search takes several device calls: every probe is saved to OUT/longest_seq.json as it ends, and a
later call given the same file (--out) continues where the last stopped; a call starts no probe it
cannot finish inside --budget-s.

  python benchmarks/longest_seq.py --cap 80 --out bench-longest --budget-s 540     # one device call
  python benchmarks/longest_seq.py --cap full --stacks unsloth,honed-offload --out bench-longest
  python benchmarks/longest_seq.py --out bench-longest --table                     # the table only

On the GPU machine the peers need .peer/site and .bench/peer_bench.py (BENCHMARKS.md, "Set-up").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_matrix import ROOT, call_meta, parse_stack_output, peer_bench_path  # noqa: E402 (the folder's sibling script)

from honed.utils.fs import write_text_atomic  # noqa: E402

SCHEMA = "honed.bench.longest_seq"
CAP_DIR = ROOT / "benchmarks" / "gpu_cap"
STACKS = {  # name → peer_bench's --stacks entry
    "unsloth": "unsloth",
    "honed-offload": "cmd:python3 -m honed bench --memory offload",
    "honed": "cmd:python3 -m honed bench",
}
# Beyond a step's --probe-timeout a probe starts its process, builds or loads the model shape and quantises it.
PROBE_OVERHEAD_S = 120
WORKLOAD = ("--shape", "llama-8b", "--batch", "1", "--steps", "1", "--warmup", "0", "--qlora")


def next_length(probes: dict[int, dict], start: int, step: int, maximum: int) -> int | None:
    """The next length to probe, from what fitted and what failed so far; None when the search is done
    (the gap between them is at most `step`, or the longest that fitted is `maximum`).

    >>> next_length({}, 131072, 16384, 2**20)
    131072
    >>> next_length({131072: {"peak_alloc_gib": 30}}, 131072, 16384, 2**20)
    262144
    >>> next_length({131072: {"peak_alloc_gib": 30}, 262144: {"error": "OOM"}}, 131072, 16384, 2**20)
    196608
    >>> next_length({65536: {"error": "OOM"}}, 131072, 16384, 2**20)  # nothing fitted yet: halve
    32768
    >>> next_length({983040: {}, 1000000: {"error": "OOM"}}, 131072, 16384, 1000000) is None  # no step fits between
    True
    """
    low, high = longest(probes)
    if low is None:
        candidate = start if high is None else (high // 2) // step * step
        return candidate if candidate >= step and candidate not in probes else None
    if high is None:
        return None if low >= maximum else min(2 * low, maximum)
    middle = (low + high) // 2 // step * step
    return middle if high - low > step and low < middle < high and middle not in probes else None


def longest(probes: dict[int, dict]) -> tuple[int | None, int | None]:
    """(the longest length that fitted, the shortest that failed)."""
    fitted = [n for n, r in probes.items() if not r.get("error")]
    failed = [n for n, r in probes.items() if r.get("error")]
    return max(fitted, default=None), min(failed, default=None)


def classify(text: str, returncode: int | None) -> dict:
    """A probe's result from its output: peer_bench's result line, else the kind of failure."""
    result = parse_stack_output(text)
    killed = returncode in (-9, 137) or "rc=-9" in text or "rc=137" in text or "Killed" in text  # peer_bench reports its child's rc
    if result.get("error") == "failed" and killed:
        return {"error": "host"}  # the kernel's OOM killer: pinned host memory ran out
    return result


def probe_command(stack: str, length: int, timeout: int, honed_args: str = "") -> list[str]:
    """peer_bench.py for one step of `stack` at `length` tokens; `honed_args` go to honed's stacks
    (e.g. "--host-memory-gib 120" where the host's reading is wrong)."""
    script = os.path.relpath(peer_bench_path(), ROOT)
    spec = STACKS[stack] + (f" {honed_args}" if honed_args and stack.startswith("honed") else "")
    return ["python3", script, *WORKLOAD, "--seq", str(length), "--stacks", spec, "--timeout", str(timeout)]


def cap_env(cap: str, models: str) -> dict[str, str]:
    env = dict(os.environ, BENCH_MODELS=models)
    if cap != "full":
        env["BENCH_GPU_CAP_GIB"] = cap
        env["PYTHONPATH"] = f"{CAP_DIR}:{os.environ.get('PYTHONPATH', '')}"
    return env


def load(path: Path) -> dict:
    state = json.loads(path.read_text()) if path.exists() else {"schema": SCHEMA, "caps": {}}
    if state.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a longest-sequence file (schema {state.get('schema')!r}, expected {SCHEMA!r})")
    return state


def probes_of(state: dict, cap: str, stack: str) -> dict[int, dict]:
    raw = state["caps"].get(cap, {}).get("stacks", {}).get(stack, {})
    return {int(n): r for n, r in raw.items()}


def format_table(state: dict) -> str:
    """One table per cap: each stack's longest length that fitted (its peak GiB and step seconds) and
    the shortest that failed (and how)."""
    parts = ["# Longest sequence: llama-8b QLoRA, batch 1, one step", ""]
    for cap, data in state["caps"].items():
        meta = data.get("meta", {})
        title = "the full card" if cap == "full" else f"a {cap} GiB cap"
        parts += [f"## {title} ({meta.get('device', 'device ?')}, {meta.get('date', 'date ?')}, commit `{meta.get('commit', '?')}`)", "",
                  "| stack | longest that fits | peak GiB | step s | shortest that failed | probes |", "|---|---|---|---|---|---|"]
        for stack in data.get("stacks", {}):
            probes = probes_of(state, cap, stack)
            low, high = longest(probes)
            fit = probes.get(low, {})
            failed = "–" if high is None else f"{high:,} ({probes[high]['error']})"
            parts.append(f"| {stack} | {'–' if low is None else f'{low:,}'} | {fit.get('peak_alloc_gib', '–')} | {fit.get('step_s', '–')} | "
                         f"{failed} | {len(probes)} |")
        parts.append("")
    return "\n".join(parts)


def save(state: dict, out: Path) -> None:
    write_text_atomic(out / "longest_seq.json", json.dumps(state, indent=1))
    write_text_atomic(out / "longest_seq.md", format_table(state))


def search(state: dict, out: Path, cap: str, stacks: list[str], args) -> None:
    """Probe each stack in turn until its search ends or the call's budget cannot hold another probe."""
    deadline = time.time() + args.budget_s
    meta = call_meta("longest")
    meta["command"] = f"python benchmarks/longest_seq.py --cap {cap}"
    entry = state["caps"].setdefault(cap, {"meta": meta, "stacks": {}})
    if entry["meta"].get("device") != meta["device"]:
        # H100s and H200s both answer for a GPU here: one search's probes must all come from one kind of card
        raise SystemExit(f"--cap {cap}: the saved search ran on {entry['meta'].get('device')}, this is {meta['device']}; "
                         "continue it on that card, or give another --out")
    entry["meta"] = meta  # the latest call's date and commit
    for stack in stacks:
        while True:
            probes = probes_of(state, cap, stack)
            length = next_length(probes, args.start, args.step, args.max)
            if length is None:
                break
            if time.time() + args.probe_timeout + PROBE_OVERHEAD_S > deadline:
                print(f"== budget: {stack} stops before {length:,} (continue with the same --out)", flush=True)
                return
            print(f"== {cap} / {stack} / {length:,}", flush=True)
            t0 = time.time()
            try:
                p = subprocess.run(probe_command(stack, length, args.probe_timeout, args.honed_args), capture_output=True, text=True,
                                   env=cap_env(cap, args.models), cwd=ROOT, timeout=args.probe_timeout + PROBE_OVERHEAD_S)
                result = classify(p.stdout + "\n" + p.stderr, p.returncode)
            except subprocess.TimeoutExpired:
                result = {"error": "timeout"}
            keep = ("peak_alloc_gib", "step_s", "tokens_per_s", "memory", "recomputed_layers", "error")
            result = {k: v for k, v in result.items() if k in keep} | {"wall_s": round(time.time() - t0, 1)}
            print("   ", json.dumps(result), flush=True)
            entry["stacks"].setdefault(stack, {})[str(length)] = result
            save(state, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", default="80", help="GiB the allocator of every process is capped at (benchmarks/gpu_cap), or 'full'; "
                    "a cap at or above the card's memory is the full card")
    ap.add_argument("--stacks", default=",".join(STACKS), help="comma-separated: " + ", ".join(STACKS))
    ap.add_argument("--out", type=Path, default=Path("bench-longest"), help="folder of longest_seq.json/.md (continued from)")
    ap.add_argument("--start", type=int, default=131072, help="first length probed")
    ap.add_argument("--step", type=int, default=16384, help="the search stops when the gap is this many tokens")
    ap.add_argument("--max", type=int, default=1048576, help="longest length probed")
    ap.add_argument("--probe-timeout", type=int, default=300, help="seconds one probe may take")
    ap.add_argument("--budget-s", type=int, default=540, help="seconds this call may spend (no probe starts that cannot end inside it)")
    ap.add_argument("--models", default=os.environ.get("BENCH_MODELS", str(ROOT / "bench_models")), help="where model shapes are saved")
    ap.add_argument("--honed-args", default="", help='more `honed bench` arguments for the honed stacks, e.g. "--host-memory-gib 120"')
    ap.add_argument("--table", action="store_true", help="print the table of --out and run nothing")
    args = ap.parse_args(argv)
    if args.cap != "full" and not args.cap.isdigit():
        ap.error(f"--cap {args.cap!r}: a whole number of GiB or 'full'")
    stacks = args.stacks.split(",")
    unknown = [s for s in stacks if s not in STACKS]
    if unknown:
        ap.error(f"--stacks: unknown {', '.join(unknown)}; choose from {', '.join(STACKS)}")
    state = load(args.out / "longest_seq.json")
    if not args.table:
        args.out.mkdir(parents=True, exist_ok=True)
        search(state, args.out, args.cap, stacks, args)
    print(format_table(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
