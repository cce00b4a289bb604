"""Scaling across GPUs (issue 20): honed's DDP and FSDP2 against HF Trainer + accelerate, 1/2/4 GPUs.

Groups (one device call each; `--group NAME`, repeatable; `--dry-run` prints the commands):

  ddp         llama-8b LoRA and QLoRA, 2048 × 2 rows per rank, honed's DDP on the fused path,
              on 1, 2 and 4 GPUs (torchrun --nproc-per-node N)
  fsdp        full fine-tuning of llama-8b with FSDP2 on 2 and 4 GPUs, without and with CPU offload
              (one GPU cannot hold its weights, gradients and AdamW state)
  peers       the same rows with HF Trainer + accelerate (benchmarks/peers/hf_accelerate_train.py):
              DDP for LoRA/QLoRA, FSDP2 for the full fine-tune
  rendezvous  two torchrun node groups on one host (--nnodes 2, c10d rendezvous on 127.0.0.1), each
              with half the GPUs, against one group of all of them: it trains and the losses agree

honed's side is its real CLI: a generated config over a random-init model folder of the shape
(honed.bench.shapes.build_shape, the single-GPU benchmarks' models) and a data file of random-token
samples, each longer than the row (truncated to exactly `--seq` tokens, so every packed row is full),
run as `torchrun ... benchmarks/scaling_rank.py --record-dir DIR --warmup W train CONFIG`, which is
`torchrun ... -m honed train CONFIG` plus a per-rank record of step seconds and peak memory
(scaling_rank.py says why). The first `--warmup` steps are not timed, and peak memory counts from
their end on both sides (model loading and quantization left out, as in `honed bench`).

Each run's record goes into `--results` (JSON, rewritten after every run, so a call cut short keeps
what finished) with the call's device, date and commit; `--merge A.json B.json ...` joins several
calls' files, and `--markdown FILE` writes the table (scaling_report.markdown_table). On the device:

  python3 benchmarks/scaling.py --group ddp --results $OUT/scaling-ddp.json --markdown $OUT/scaling-ddp.md \\
      --commit COMMIT --models /tmp/bench_models --work /tmp/scaling_work

(the working tree travels without .git: give the commit). Each group's runs on 4 GPUs; on a 2-GPU
machine add `--world-sizes 1,2`. A group that would outrun one call splits by `--workloads`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scaling_report beside this file, also when loaded by path

import scaling_report  # noqa: E402

from honed.bench.shapes import TARGETS  # noqa: E402  (the seven projections LoRA trains in every benchmark)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GROUPS = ("ddp", "fsdp", "peers", "rendezvous")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the benchmark: which stack trains which workload on how many processes."""

    group: str
    stack: str  # "honed" or scaling_report.PEER_STACK
    workload: str  # lora | qlora | full
    strategy: str  # ddp | fsdp
    world: int
    shape: str
    seq: int
    batch: int  # rows per rank per step
    steps: int  # timed steps
    warmup: int
    offload: bool = False
    nnodes: int = 1
    device: str = "cuda"

    @property
    def name(self) -> str:
        off = "-offload" if self.offload else ""
        nodes = f"-{self.nnodes}nodes" if self.nnodes > 1 else ""
        return f"{self.stack}-{self.shape}-{self.workload}-{self.strategy}{off}-{self.world}gpu{nodes}"

    def row(self) -> dict:
        """The record keys a result carries from its spec."""
        return {"stack": self.stack, "workload": self.workload, "strategy": self.strategy, "offload": self.offload,
                "world": self.world, "nnodes": self.nnodes, "shape": self.shape, "seq": self.seq, "batch_per_rank": self.batch,
                "steps": self.steps, "warmup": self.warmup}


def plan(group: str, *, world_sizes=(1, 2, 4), shape: str = "llama-8b", seq: int = 2048, batch: int = 2, steps: int = 8,
         warmup: int = 2, rendezvous_shape: str = "llama-1b", device: str = "cuda", workloads=("lora", "qlora", "full")) -> list[RunSpec]:
    """The runs of one group, in the order they run; `workloads` keeps only those (to split a group
    over two calls when it would outrun one call's 10 minutes).

    >>> [s.name for s in plan("fsdp", world_sizes=(1, 2))]
    ['honed-llama-8b-full-fsdp-2gpu', 'honed-llama-8b-full-fsdp-offload-2gpu']
    """
    if group not in GROUPS:
        raise SystemExit(f"--group {group!r}: use one of {', '.join(GROUPS)}")
    common = dict(group=group, shape=shape, seq=seq, batch=batch, steps=steps, warmup=warmup, device=device)
    ddp_rows = [dict(workload=w, strategy="ddp", world=n) for w in ("lora", "qlora") if w in workloads for n in world_sizes]
    fsdp_rows = [dict(workload="full", strategy="fsdp", world=n, offload=off)
                 for n in world_sizes if n >= 2 and "full" in workloads for off in (False, True)]
    if group == "ddp":
        return [RunSpec(stack="honed", **common, **r) for r in ddp_rows]
    if group == "fsdp":
        return [RunSpec(stack="honed", **common, **r) for r in fsdp_rows]
    if group == "peers":
        return [RunSpec(stack=scaling_report.PEER_STACK, **common, **r) for r in ddp_rows + fsdp_rows]
    world = max(world_sizes)
    if world < 2:
        raise SystemExit("--group rendezvous needs --world-sizes with 2 or more GPUs (each node group takes half)")
    common["shape"] = rendezvous_shape
    return [RunSpec(stack="honed", workload="lora", strategy="ddp", world=world, nnodes=n, **common) for n in (1, 2)]


# ---- inputs of a honed run ------------------------------------------------------------------------


def write_random_samples(path: Path, *, samples: int, seq: int, vocab: int, seed: int = 0) -> Path:
    """Alpaca records whose answers are `seq` random words `t<id>` (one token each with the shapes'
    word-level tokenizer): honed truncates each sample to exactly `seq` tokens, one full row each."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(samples):
            words = " ".join(f"t{rng.randrange(4, vocab)}" for _ in range(seq))
            fh.write(json.dumps({"instruction": "t4 t5 t6", "output": words}) + "\n")
    return path


def honed_config(spec: RunSpec, *, model_dir: str, data_path: str, output_dir: str) -> dict:
    """The `honed train` config of a run (what a user would write for it)."""
    training = {"output_dir": output_dir, "batch_size": spec.batch, "gradient_accumulation_steps": 1,
                "max_steps": spec.warmup + spec.steps, "learning_rate": 1e-4, "weight_decay": 0.01, "lr_scheduler": "constant",
                "warmup_ratio": 0.0, "logging_steps": 1, "save_steps": 10**9, "save_total_limit": 1, "tensorboard": False,
                "seed": 0, "device": spec.device, "precision": "bf16" if spec.device == "cuda" else "fp32"}
    distributed = {"strategy": spec.strategy}
    cfg = {"model": {"name_or_path": model_dir},
           "data": {"train": [data_path], "max_seq_length": spec.seq, "packing": True, "val_ratio": 0.0},
           "method": spec.workload, "training": training, "distributed": distributed}
    if spec.workload == "full":
        training["gradient_checkpointing"] = True  # an 8B step's activations beside its shards: recompute, as the peer does
        distributed["fsdp_cpu_offload"] = spec.offload
    else:
        cfg["lora"] = {"r": 16, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS}
    return cfg


# llama-8b's kind of config at toy size, for the CPU smoke test: built by the same build_shape, so it has
# the same stand-in word-level tokenizer and goes through the same chat template as the real shapes.
TINY_SHAPE = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, rope_theta=500000.0, tie_word_embeddings=False, head_dim=16)


def model_dir_for(shape: str, models: Path, *, build: bool = True) -> Path:
    """The random-init model folder of `shape` (honed.bench.shapes, or "tiny"), built once and kept in
    `models`. It is built in a child process: built here, on the GPU, this process would keep the
    allocator's cache on GPU 0 through every run and take memory from rank 0."""
    out = models / shape
    if not build or (out / "config.json").exists():
        return out
    code = ("import sys; from honed.bench import shapes; shapes.SHAPES['tiny'] = " + repr(TINY_SHAPE) +
            "; shapes.build_shape(sys.argv[1], sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code, shape, str(models)], check=True, env=env)
    return out


def vocab_of(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


# ---- commands -----------------------------------------------------------------------------------


def torchrun(nproc: int, *, nnodes: int = 1, node_rank: int = 0, endpoint: str | None = None) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if nnodes == 1:
        return [*args, "--standalone"]
    return [*args, "--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", "scaling"]


def commands(spec: RunSpec, run_dir: Path, *, model_dir: Path, endpoint: str = "127.0.0.1:29555") -> list[tuple[list[str], dict]]:
    """(argv, extra environment) of each process group a run starts: one, or one per emulated node."""
    if spec.stack != "honed":
        peer = [str(HERE / "peers" / "hf_accelerate_train.py"), "--model", str(model_dir), "--workload", spec.workload,
                "--strategy", spec.strategy, "--seq", str(spec.seq), "--batch", str(spec.batch), "--steps", str(spec.steps),
                "--warmup", str(spec.warmup)] + (["--offload"] if spec.offload else [])
        return [(torchrun(spec.world) + peer, {})]
    worker = [str(HERE / "scaling_rank.py"), "--record-dir", str(run_dir / "ranks"), "--warmup", str(spec.warmup), "train", str(run_dir / "config.yaml"), "--no-progress"]
    if spec.nnodes == 1:
        return [(torchrun(spec.world) + worker, {})]
    per_node = spec.world // spec.nnodes
    groups = []
    for k in range(spec.nnodes):
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(k * per_node, (k + 1) * per_node))} if spec.device == "cuda" else {}
        groups.append((torchrun(per_node, nnodes=spec.nnodes, node_rank=k, endpoint=endpoint) + worker, env))
    return groups


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_honed_run(spec: RunSpec, run_dir: Path, model_dir: Path) -> None:
    """The run's data file and config.yaml (and no output of an earlier run: it would be resumed)."""
    import yaml

    shutil.rmtree(run_dir, ignore_errors=True)
    samples = spec.world * spec.batch * (spec.warmup + spec.steps)
    data = write_random_samples(run_dir / "data.jsonl", samples=samples, seq=spec.seq + 16, vocab=vocab_of(model_dir))
    cfg = honed_config(spec, model_dir=str(model_dir), data_path=str(data), output_dir=str(run_dir / "output"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def execute(spec: RunSpec, run_dir: Path, model_dir: Path, *, timeout: float, keep_outputs: bool = False) -> dict:
    """Run one spec; its record (with `error` instead of numbers when it failed). Logs: run_dir/*.log."""
    record = spec.row()
    if spec.stack == "honed":
        prepare_honed_run(spec, run_dir, model_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    groups = commands(spec, run_dir, model_dir=model_dir, endpoint=f"127.0.0.1:{free_port()}")
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    procs = []
    for k, (argv, env) in enumerate(groups):
        log = open(run_dir / f"group{k}.log", "w")
        # its own session: a run that outlives --timeout is ended with every worker torchrun started
        procs.append((subprocess.Popen(argv, env={**base_env, **env}, stdout=log, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True), log))
    deadline = time.monotonic() + timeout  # for the run, however many node groups it has
    try:
        codes = [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p, _ in procs]
    except subprocess.TimeoutExpired:
        for p, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        codes = [f"timed out after {timeout:.0f} s"]
    finally:
        for _, log in procs:
            log.close()
    output = (run_dir / "group0.log").read_text(errors="replace")
    try:
        if any(c != 0 for c in codes):
            raise scaling_report.ResultError(f"exit {codes}; log tail: {output[-1500:]}")
        if spec.stack == "honed":
            ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "ranks").glob("rank-*.json"))]
            record.update(scaling_report.summarise_ranks(ranks, warmup=spec.warmup))
        else:
            record.update(scaling_report.parse_result_line(output, where=spec.name))
    except scaling_report.ResultError as err:
        record["error"] = str(err)
    if not keep_outputs:  # an 8B full fine-tune leaves ~100 GB of checkpoint and weights
        shutil.rmtree(run_dir / "output", ignore_errors=True)
    return record


# ---- the call -----------------------------------------------------------------------------------


def call_info(group: str, commit: str | None) -> dict:
    """Device, date and commit of this call (nvidia-smi names the GPUs; git the commit when given none)."""
    now = dt.datetime.now(dt.timezone.utc)
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()
        device = f"{len(gpus)} × {gpus[0]}" if gpus else "cpu"
    except (OSError, subprocess.SubprocessError):
        device = "cpu"
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return {"device": device, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit or "unknown",
            "call_id": f"{group}-{now.strftime('%Y%m%dT%H%M%S')}"}


def run_group(group: str, specs: list[RunSpec], *, call: dict, work: Path, models: Path, results_path: Path,
              timeout: float, keep_outputs: bool = False, show=print) -> dict:
    """Run a group's specs one after another; the results file is rewritten after each run. `call`
    (call_info) is the same for every group of one invocation: their rows are same-run peers."""
    results = scaling_report.load_results(results_path)
    new = {"runs": [], "checks": []}
    shapes = {}
    for spec in specs:
        if spec.shape not in shapes:
            shapes[spec.shape] = model_dir_for(spec.shape, models)
        record = execute(spec, work / spec.name, shapes[spec.shape], timeout=timeout, keep_outputs=keep_outputs)
        record["call"] = call
        new["runs"].append(record)
        show(f"{spec.name}: " + (f"ERROR {record['error'][:300]}" if "error" in record else
                                 f"{record['tokens_per_s']:,.0f} tok/s, peak GiB/rank {record['peak_alloc_gib_per_rank']}"))
        if group == "rendezvous" and len(new["runs"]) == 2 and not any("error" in r for r in new["runs"]):
            one, two = new["runs"]
            new["checks"].append(scaling_report.loss_check("two node groups (c10d) against one", two["losses"], one["losses"], world=spec.world))
        results = scaling_report.merge([results, new])
        scaling_report.write_results(results_path, results)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", action="append", choices=GROUPS, help="group to run (repeatable); default: none, only --merge/--markdown")
    p.add_argument("--dry-run", action="store_true", help="print each group's commands and exit")
    p.add_argument("--world-sizes", default="1,2,4", help="GPUs per run (default 1,2,4; 1,2 on a 2-GPU machine)")
    p.add_argument("--workloads", default="lora,qlora,full", help="keep only these rows (e.g. lora: the ddp group's LoRA half)")
    p.add_argument("--shape", default="llama-8b", help="model shape of ddp/fsdp/peers (honed.bench.shapes; 'tiny' for the CPU smoke test)")
    p.add_argument("--rendezvous-shape", default="llama-1b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--work", default="scaling_work", help="run folders (configs, data, logs, rank records)")
    p.add_argument("--models", default=os.environ.get("BENCH_MODELS", "bench_models"), help="where model shapes are built and kept")
    p.add_argument("--results", default="scaling_results.json", help="results JSON (merged with what it holds)")
    p.add_argument("--merge", nargs="*", default=[], metavar="JSON", help="result files of other calls to merge into --results")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--commit", help="the commit being measured (default: git rev-parse --short HEAD)")
    p.add_argument("--timeout", type=float, default=300, help="seconds one run may take (a device call has 600 in all)")
    p.add_argument("--keep-outputs", action="store_true", help="keep each honed run's output folder (checkpoints, weights)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    worlds = tuple(int(x) for x in args.world_sizes.split(","))
    opts = dict(world_sizes=worlds, shape=args.shape, seq=args.seq, batch=args.batch, steps=args.steps, warmup=args.warmup,
                rendezvous_shape=args.rendezvous_shape, device=args.device, workloads=tuple(args.workloads.split(",")))
    work, models, results_path = Path(args.work).resolve(), Path(args.models).resolve(), Path(args.results)
    call = None if args.dry_run or not args.group else call_info("+".join(args.group), args.commit)
    for group in args.group or []:
        specs = plan(group, **opts)
        if args.dry_run:
            print(f"# group {group}: {len(specs)} run(s)")
            for spec in specs:
                for argv_, env in commands(spec, work / spec.name, model_dir=model_dir_for(spec.shape, models, build=False)):
                    print(" ".join([*(f"{k}={v}" for k, v in env.items()), *map(shlex.quote, argv_)]))
            continue
        run_group(group, specs, call=call, work=work, models=models, results_path=results_path, timeout=args.timeout,
                  keep_outputs=args.keep_outputs)
    if args.dry_run:
        return 0
    if args.merge:
        merged = scaling_report.merge([scaling_report.load_results(results_path)] + [scaling_report.load_results(p) for p in args.merge])
        scaling_report.write_results(results_path, merged)
    if args.markdown:
        table = scaling_report.markdown_table(scaling_report.load_results(results_path))
        Path(args.markdown).write_text(table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
