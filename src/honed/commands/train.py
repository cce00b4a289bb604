"""`honed train CONFIG.yaml [key=value ...] [--nproc-per-node N [--nnodes M --node-rank K --rdzv-endpoint HOST:PORT]]`"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (SFT, or DPO/ORPO/SimPO/KTO with objective:; LoRA, QLoRA or full) from a YAML config")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. training.learning_rate=1e-4")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    dist = p.add_argument_group("several GPUs or hosts (starts torchrun's launcher; the same as `torchrun ... -m honed train`)")
    dist.add_argument("--nproc-per-node", type=int, metavar="N", help="processes on this host, one per GPU")
    dist.add_argument("--nnodes", default="1", metavar="M", help="hosts in the job (default 1)")
    dist.add_argument("--node-rank", type=int, default=0, metavar="K", help="this host's index, 0..M-1")
    dist.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="where the hosts meet (c10d rendezvous); the same on every host")
    dist.add_argument("--rdzv-id", metavar="ID", help="job id shared by the hosts (default: honed)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.nproc_per_node is not None:
        return launch_workers(args)
    from honed.train.distributed import launched_by_torchrun

    if launched_by_torchrun():  # a torchrun worker: an error is also recorded for torchrun's failure report
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(train_command)(args)
    return train_command(args)


def launch_workers(args) -> int:
    """`--nproc-per-node N`: torchrun's launcher runs this same command (less these flags) in N workers."""
    from honed.errors import ConfigError
    from honed.train.launch import INTERRUPTED, launch

    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node}: give at least 1")
    honed_args = ["train", args.config, *args.overrides] + (["--no-progress"] if args.no_progress else [])
    code = launch(honed_args, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
                  rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)
    if code == INTERRUPTED:
        from rich.console import Console

        Console(stderr=True).print("[yellow]interrupted[/]: a checkpoint was saved; run the same command with training.resume=true to go on")
    return code


def train_command(args) -> int:
    from rich.console import Console

    from honed.config import load_config
    from honed.train.distributed import is_main_process
    from honed.train.sft import TrainingInterrupted, train

    cfg = load_config(args.config, args.overrides)
    console = Console(stderr=True, quiet=not is_main_process())  # under torchrun, rank 0 reports
    if cfg.stages:
        from honed.train.stages import run_stages

        try:
            results = run_stages(cfg, show_progress=not args.no_progress)
        except TrainingInterrupted as stop:
            console.print(f"[yellow]{stop}[/] (finished stages are kept; run the same command again to go on)")
            return 130
        for stage, res in zip(cfg.stages, results):
            console.print(f"stage {stage.name}: " + ("already finished" if res is None else f"{res.steps} steps → {res.output_dir}"))
        return 0
    try:
        result = train(cfg, show_progress=not args.no_progress)
    except TrainingInterrupted as stop:
        console.print(f"[yellow]{stop}[/]")
        return 130
    console.print(f"[green]done[/]: {result.steps} steps, final train loss {result.losses[-1]:.4f}" if result.losses else "[green]done[/]")
    if result.best_step is not None:
        kept = f": {result.output_dir / 'best'}" if cfg.training.save_best else " (training.save_best: false, not kept)"
        console.print(f"best validation loss at step {result.best_step}{kept}")
    if result.stopped_early:
        console.print("stopped early: validation loss stopped improving")
    console.print(f"outputs: {result.output_dir} (weights, config.yaml, run_info.json, metrics.jsonl, loss_curve.png, checkpoints/)")
    return 0
