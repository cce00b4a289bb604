"""The per-card matrix: on a card of N GiB, which stack is fastest and what fits.

One group is one memory cap (16, 24, 48, 80 GiB, or the full card) and is meant to be one device call.
Inside a group every row (a workload) runs each stack in its own process, under benchmarks/gpu_cap,
which caps every CUDA allocator of the process tree at the group's GiB, the same for every stack:

  llama-1b        LoRA, 2,048 × 4 random tokens           peer_bench.py
  llama-8b-lora   LoRA, 2,048 × 2                         peer_bench.py
  llama-8b-qlora  QLoRA (NF4), 2,048 × 2                  peer_bench.py --qlora
  qwen-7b-lora    LoRA, 4,096 × 1                         peer_bench.py
  packed-1b       llama-1b on alpaca-length packed data   benchmarks/packed_peers.py

against HF+PEFT, Unsloth's default (and, for packed data, its length-grouped padded layout: the
table shows Unsloth's faster one) and honed's default (`honed bench`, `memory: auto`). Each stack's
result (or OOM / failure) is merged into OUT/card_matrix.json as soon as it ends, and
OUT/card_matrix.md is written again from the whole JSON, so a call cut short keeps what it ran and
several calls (or `--merge` of the JSON files they brought back) fill one table.

  python benchmarks/card_matrix.py --dry-run                      # the plan: every group's commands
  python benchmarks/card_matrix.py --group cap24 --out $OUT       # one device call
  python benchmarks/card_matrix.py --group cap24 --rows llama-8b-lora,llama-8b-qlora --out $OUT
                                    # part of a group, where all of it takes longer than one call allows
  python benchmarks/card_matrix.py --merge a/card_matrix.json b/card_matrix.json --out bench-matrix

On the GPU machine the peers need .peer/site and a copy of ../shared/bench/peer_bench.py in .bench/
(BENCHMARKS.md, "Set-up"); put both and src/ on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from honed.utils.fs import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
CAP_DIR = ROOT / "benchmarks" / "gpu_cap"
PEER_BENCH_PLACES = (ROOT / ".bench" / "peer_bench.py", ROOT / "benchmarks" / "peer_bench.py",
                     ROOT.parent / "shared" / "bench" / "peer_bench.py")
SCHEMA = "honed.bench.card_matrix"

GROUPS = {"cap16": 16, "cap24": 24, "cap48": 48, "cap80": 80, "full": None}  # group → GiB cap (None: the whole card)
HONED = "honed"


@dataclass(frozen=True)
class Row:
    """One workload: which script runs it and with which arguments."""

    name: str
    label: str
    script: str  # "peer" (peer_bench.py) or "packed" (benchmarks/packed_peers.py)
    args: tuple[str, ...]
    stacks: tuple[str, ...]  # stack names as the script takes them; HONED is honed's default


_RANDOM = ("hf", "unsloth", HONED)
ROWS = (
    Row("llama-1b", "llama-1b LoRA, 2048 × 4", "peer",
        ("--shape", "llama-1b", "--seq", "2048", "--batch", "4", "--steps", "10", "--warmup", "3"), _RANDOM),
    Row("llama-8b-lora", "llama-8b LoRA, 2048 × 2", "peer",
        ("--shape", "llama-8b", "--seq", "2048", "--batch", "2", "--steps", "8", "--warmup", "2"), _RANDOM),
    Row("llama-8b-qlora", "llama-8b QLoRA, 2048 × 2", "peer",
        ("--shape", "llama-8b", "--seq", "2048", "--batch", "2", "--steps", "8", "--warmup", "2", "--qlora"), _RANDOM),
    Row("qwen-7b-lora", "qwen-7b LoRA, 4096 × 1", "peer",
        ("--shape", "qwen-7b", "--seq", "4096", "--batch", "1", "--steps", "8", "--warmup", "2"), _RANDOM),
    Row("packed-1b", "llama-1b, packed alpaca lengths, 2048 × 4", "packed",
        ("--shape", "llama-1b", "--seq", "2048", "--batch", "4", "--steps", "10", "--warmup", "3", "--lengths", "alpaca"),
        ("hf", "unsloth", "unsloth-padded", HONED)),
)
ROW_BY_NAME = {r.name: r for r in ROWS}
# the table's columns: a column → the stacks that may fill it (the fastest that ran wins)
COLUMNS = {"HF+PEFT": ("hf",), "Unsloth": ("unsloth", "unsloth-padded"), "honed": (HONED,)}


def peer_bench_path() -> Path:
    """The first peer_bench.py found (the checkout's .bench/ copy, benchmarks/, then ../shared/bench)."""
    return next((p for p in PEER_BENCH_PLACES if p.exists()), PEER_BENCH_PLACES[0])


def stack_command(row: Row, stack: str, timeout: int, python: str = "python3") -> list[str]:
    """The command that runs one stack of one row (its script's own `--stacks` with one entry)."""
    script = peer_bench_path() if row.script == "peer" else ROOT / "benchmarks" / "packed_peers.py"
    script = os.path.relpath(script, ROOT)  # the commands run from the checkout's root
    spec = "cmd:python3 -m honed bench" if stack == HONED else stack
    return [python, script, *row.args, "--stacks", spec, "--timeout", str(timeout)]


def group_env(group: str, models: str) -> dict[str, str]:
    """The environment a group's commands add: the cap (if any) and the shared folder of model shapes."""
    env = {"BENCH_MODELS": models}
    if GROUPS[group] is not None:
        env["BENCH_GPU_CAP_GIB"] = str(GROUPS[group])
        env["PYTHONPATH"] = f"{CAP_DIR}:$PYTHONPATH"
    return env


def plan(groups: list[str], rows: list[str], timeout: int, models: str) -> list[dict]:
    """Every (group, row, stack) to run, with its environment and command, in running order."""
    steps = []
    for group in groups:
        env = group_env(group, models)
        for name in rows:
            row = ROW_BY_NAME[name]
            for stack in row.stacks:
                steps.append(dict(group=group, row=name, stack=stack, env=env, command=stack_command(row, stack, timeout)))
    return steps


def format_plan(steps: list[dict]) -> str:
    """The plan as text: one block per group (one device call), its environment, then one command per line."""
    out, current = [], None
    for s in steps:
        if s["group"] != current:
            current = s["group"]
            cap = GROUPS[current]
            out.append(f"\n== group {current} ({'full card' if cap is None else f'{cap} GiB cap'}; one device call)")
            out.append("   env: " + " ".join(f"{k}={v}" for k, v in s["env"].items()))
        out.append(f"   [{s['row']} / {s['stack']}] " + " ".join(_quote(a) for a in s["command"]))
    return "\n".join(out).lstrip("\n")


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def parse_stack_output(text: str) -> dict:
    """One stack's result from its script's output: the last JSON line with a throughput, else the failure.

    A failure whose output says the GPU ran out of memory is `{"error": "OOM"}`: on a capped card that
    is an answer (it does not fit), not a broken run.
    """
    for line in reversed(text.splitlines()):
        line = line.removeprefix("RESULT ").strip()
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(result, dict) and ("tokens_per_s" in result or "effective_tokens_per_s" in result):
                return result
    lowered = text.lower()
    if "out of memory" in lowered or "outofmemoryerror" in lowered:
        return {"error": "OOM"}
    if "timed out" in lowered:
        return {"error": "timeout"}
    return {"error": "failed"}


def empty_matrix() -> dict:
    return {"schema": SCHEMA, "groups": {}}


def merge(matrix: dict, other: dict) -> dict:
    """Fold `other` into `matrix`: a stack measured in both keeps `other`'s result (the newer call), and
    each group's meta follows the call that last wrote into it."""
    if other.get("schema") != SCHEMA:
        raise ValueError(f"not a card matrix (schema {other.get('schema')!r}, expected {SCHEMA!r})")
    for group, data in other.get("groups", {}).items():
        mine = matrix["groups"].setdefault(group, {"meta": {}, "rows": {}})
        mine["meta"] = dict(data.get("meta", {})) or mine["meta"]
        for row, stacks in data.get("rows", {}).items():
            mine["rows"].setdefault(row, {}).update(stacks)
    return matrix


def record(matrix: dict, group: str, row: str, stack: str, result: dict, meta: dict) -> dict:
    """Put one stack's result into the matrix (replacing an older one)."""
    return merge(matrix, {"schema": SCHEMA, "groups": {group: {"meta": meta, "rows": {row: {stack: result}}}}})


def throughput(result: dict) -> float | None:
    """Tokens/s that count: effective (non-padding) ones on packed data."""
    if not result or result.get("error"):
        return None
    return result.get("effective_tokens_per_s", result.get("tokens_per_s"))


def best(stacks: dict, names: tuple[str, ...]) -> tuple[str | None, dict | None]:
    """The fastest of `names` that ran; else the first one's failure; else nothing."""
    ran = [(n, stacks[n]) for n in names if throughput(stacks.get(n)) is not None]
    if ran:
        return max(ran, key=lambda nr: throughput(nr[1]))
    failed = [(n, stacks[n]) for n in names if n in stacks]
    return failed[0] if failed else (None, None)


def loss_vs_hf_pct(result: dict | None, hf: dict | None) -> float | None:
    """Largest relative loss difference from HF+PEFT's over the steps both ran (percent); on packed data,
    the difference of the token-weighted mean losses."""
    if throughput(result) is None or throughput(hf) is None:
        return None
    a, b = result.get("losses"), hf.get("losses")
    if a and b and len(a) == len(b):
        return 100 * max(abs(x - y) / abs(y) for x, y in zip(a, b))
    if "loss_mean" in result and "loss_mean" in hf:
        return 100 * abs(result["loss_mean"] - hf["loss_mean"]) / abs(hf["loss_mean"])
    return None


def _cell(name: str | None, result: dict | None, default: str) -> str:
    if result is None:
        return "–"
    if result.get("error"):
        return result["error"]
    text = f"{throughput(result):,.0f}, {result['peak_alloc_gib']:.2f}"
    return f"{text} ({name})" if name != default else text


def format_table(matrix: dict) -> str:
    """The markdown page: for each group that has results, its device/date/commit and one line per row."""
    parts = ["# Per-card matrix", "",
             "tok/s (effective on packed data), peak GiB. The ratio is honed ÷ the faster Unsloth layout of the same",
             "call; loss: honed's largest difference from HF+PEFT's over every step. OOM: did not fit under the cap.", ""]
    for group in GROUPS:
        data = matrix["groups"].get(group)
        if not data or not data.get("rows"):
            continue
        cap, meta = GROUPS[group], data.get("meta", {})
        title = "the full card" if cap is None else f"a {cap} GiB cap"
        parts.append(f"## {title} ({meta.get('device', 'device ?')}, {meta.get('date', 'date ?')}, commit `{meta.get('commit', '?')}`)")
        parts += ["", "| workload | HF+PEFT | Unsloth | honed (default) | honed ÷ Unsloth | honed loss vs HF+PEFT |",
                  "|---|---|---|---|---|---|"]
        for row in ROWS:
            stacks = data["rows"].get(row.name)
            if not stacks:
                continue
            cells = {col: best(stacks, names) for col, names in COLUMNS.items()}
            honed, unsloth = cells["honed"][1], cells["Unsloth"][1]
            ratio = (f"{throughput(honed) / throughput(unsloth):.2f}×"
                     if throughput(honed) is not None and throughput(unsloth) is not None else "–")
            loss = loss_vs_hf_pct(honed, stacks.get("hf"))
            parts.append(f"| {row.label} | {_cell(*cells['HF+PEFT'], 'hf')} | {_cell(*cells['Unsloth'], 'unsloth')} | "
                         f"{_cell(*cells['honed'], HONED)} | {ratio} | {'–' if loss is None else f'{loss:.3f}%'} |")
        if meta.get("command"):
            parts += ["", f"Regenerate: `{meta['command']}`"]
        parts.append("")
    return "\n".join(parts)


def save(matrix: dict, out: Path) -> None:
    # atomic (temporary file, then rename), so a call cut short leaves no half file
    write_text_atomic(out / "card_matrix.json", json.dumps(matrix, indent=1))
    write_text_atomic(out / "card_matrix.md", format_table(matrix))


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else empty_matrix()


def call_meta(group: str) -> dict:
    """Where and when this call ran: the device name, the UTC date, the commit (marked when the tree differs)."""
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = out(["git", "rev-parse", "--short", "HEAD"]) or "?"
    if out(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += "+changes"
    device = out(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines()
    return {"device": device[0] if device else "unknown device",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "commit": commit, "command": f"python benchmarks/card_matrix.py --group {group}"}


def run_group(steps: list[dict], out: Path, timeout: int) -> dict:
    """Run the planned stacks one by one, saving after each, and return the merged matrix."""
    matrix = load(out / "card_matrix.json")
    metas = {}
    for s in steps:
        meta = metas.setdefault(s["group"], call_meta(s["group"]))
        env = dict(os.environ, **{k: v.replace("$PYTHONPATH", os.environ.get("PYTHONPATH", "")) for k, v in s["env"].items()})
        print(f"== {s['group']} / {s['row']} / {s['stack']}", flush=True)
        t0 = time.time()
        try:
            p = subprocess.run(s["command"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout + 120)
            text = p.stdout + "\n" + p.stderr
        except subprocess.TimeoutExpired:
            text = "timed out"
        result = parse_stack_output(text)
        result["wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(result)[:400] if not result.get("error") else f"   {result['error']}\n{text[-1500:]}", flush=True)
        record(matrix, s["group"], s["row"], s["stack"], result, meta)
        save(matrix, out)
    return matrix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", action="append", choices=sorted(GROUPS), help="group(s) to run (default with --dry-run: all)")
    ap.add_argument("--rows", default=",".join(ROW_BY_NAME), help="comma-separated rows: " + ", ".join(ROW_BY_NAME))
    ap.add_argument("--out", type=Path, default=Path("bench-matrix"), help="folder of card_matrix.json/.md (merged into)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds allowed per stack")
    ap.add_argument("--models", default=os.environ.get("BENCH_MODELS", str(ROOT / "bench_models")),
                    help="where model shapes are saved, shared by every stack")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (each group's commands) and run nothing")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="merge these card_matrix.json files into --out and rewrite the table; runs nothing")
    args = ap.parse_args(argv)

    unknown = [r for r in args.rows.split(",") if r not in ROW_BY_NAME]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROW_BY_NAME)}")
    if args.merge:
        matrix = load(args.out / "card_matrix.json")
        for path in args.merge:
            try:
                merge(matrix, json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                ap.error(f"--merge {path}: {e}")
        save(matrix, args.out)
        print(format_table(matrix))
        return 0
    groups = args.group or (list(GROUPS) if args.dry_run else None)
    if not groups:
        ap.error("name a --group to run (one device call each), or --dry-run to see the plan")
    steps = plan(groups, args.rows.split(","), args.timeout, os.path.abspath(args.models))
    if args.dry_run:
        print(format_plan(steps))
        return 0
    matrix = run_group(steps, args.out, args.timeout)
    print(format_table(matrix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
