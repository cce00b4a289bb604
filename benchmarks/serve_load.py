"""Bounded load on `honed serve` over loopback: requests/s and p50/p95 latency, with and without batching.

For each `--max-batch` value it starts `python -m honed serve` on a free 127.0.0.1 port, waits for
/health, sends `--requests` chat requests (questions from the shipped sample data, greedy,
`--max-tokens` each) with at most `--concurrency` in flight, stops the server with SIGTERM and
measures. It stops by itself; nothing leaves the machine. The last line printed is
`RESULT {json}` with one entry per batch size.

    python benchmarks/serve_load.py                                   # the shipped tiny model, CPU
    python benchmarks/serve_load.py --model /models/Qwen2.5-7B-Instruct --device cuda --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def questions() -> list[str]:
    data = resources.files("honed") / "resources" / "sample_data" / "clinical_lab_eval.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["messages"][0]["content"] for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


async def load(base: str, prompts: list[str], args) -> dict:
    import httpx

    limit = asyncio.Semaphore(args.concurrency)
    latencies, tokens, failures = [], [], 0

    async def one(client, i):
        nonlocal failures
        body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
        async with limit:
            start = time.perf_counter()
            r = await client.post(f"{base}/v1/chat/completions", json=body)
            if r.status_code != 200:
                failures += 1
                return
            latencies.append(time.perf_counter() - start)
            tokens.append(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=args.timeout) as client:
        before = (await client.get(f"{base}/health")).json()  # the warm-up request is not counted
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(args.requests)))
        wall = time.perf_counter() - started
        after = (await client.get(f"{base}/health")).json()
    batches, rows = after["batches"] - before["batches"], after["rows"] - before["rows"]
    busy = after["generating_s"] - before["generating_s"]
    return {"requests": args.requests, "ok": len(latencies), "failed": failures, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "batches": batches, "mean_batch": round(rows / max(1, batches), 2), "mean_batch_s": round(busy / max(1, batches), 3)}


def run_one(args, max_batch: int) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "honed", "serve", "--model", args.model, "--device", args.device, "--dtype", args.dtype,
           "--port", str(port), "--served-model-name", "bench", "--max-batch", str(max_batch),
           "--max-concurrency", str(max(64, args.concurrency)), "--max-tokens-limit", str(max(1024, args.max_tokens))]
    env = {**os.environ, "HONED_API_KEY": ""}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + args.startup_timeout
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"the server exited during start-up:\n{log.read()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("the server did not start in time")
            time.sleep(0.5)
        warm = {"model": "bench", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        httpx.post(f"{base}/v1/chat/completions", json=warm, timeout=args.timeout)  # first-call costs out of the numbers
        result = asyncio.run(load(base, questions(), args))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"max_batch": max_batch, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(resources.files("honed") / "resources" / "tiny_base"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated --max-batch values (1 = no batching)")
    parser.add_argument("--timeout", type=float, default=600, help="per-request timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=600)
    args = parser.parse_args()
    runs = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        runs.append(run_one(args, size))
        print(json.dumps(runs[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    print("RESULT " + json.dumps({"model": Path(args.model).name, "device": args.device, "host": platform.node(),
                                  "cpus": os.cpu_count(), "requests": args.requests, "concurrency": args.concurrency,
                                  "max_tokens": args.max_tokens, "commit": commit, "date": time.strftime("%Y-%m-%d"),
                                  "runs": runs}))


if __name__ == "__main__":
    main()
