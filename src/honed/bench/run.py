"""`honed bench`'s run: `honed train`'s own set-up parts and `train_step` on a random-init model shape.

The model shape is the peer benchmark's (../shared/bench/peer_bench.py, whose `cmd:` stack runs
`honed bench` with the same arguments). The run is built as `honed train` builds one
(`honed.train.recipe`: base model → LoRA/QLoRA → select_path/prepare → AdamW), and every step is
`recipe.train_step` with one micro-batch: the path's loss under autocast (`--precision`, as
`training.precision`), backward with the out-of-memory fallback, gradient clipping
(`--max-grad-norm`, 1.0 as in `honed train`; 0 or none: no clipping, as the peers), AdamW. The
learning rate is constant (peer_bench.py's AdamW lr 1e-4 has no schedule). Two kinds of data:

- random shape (the default): `--batch` rows of `--seq` random tokens, peer_bench.py's batches in its
  order (warm-up steps take batches 0, 1, …; the timed steps start again from batch 0), so each
  step's loss compares with the peers' loss of the same step;
- real-data lengths (`--lengths alpaca`): samples of varying length drawn from a shipped distribution
  (resources/bench/), filled with seeded random tokens and packed by honed's own packing
  (`data.packing`: `--batch` rows of up to `--seq` tokens a micro-batch), one optimizer step per
  micro-batch. It reports effective (non-padding) tokens/s.

`args` are the flags as `honed bench` parses them; a CUDA GPU is needed.

>>> result = run_bench(args)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from honed.bench.data import DATA_SEED, FIRST_TOKEN_ID, PAD_ID, bench_data
from honed.bench.results import packed_result_fields
from honed.bench.shapes import SHAPES, TARGETS, build_shape, flops_per_token
from honed.bench.timing import batch_order, host_fields, memory_fields, step_spread_fields, time_steps
from honed.errors import HonedError


def default_models_dir(work_dir: str | os.PathLike | None = None) -> str:
    """Where shapes are saved: $BENCH_MODELS (shared with peer_bench.py) or WORK_DIR/bench_models
    (the current folder when none is given)."""
    return os.environ.get("BENCH_MODELS") or str(Path(work_dir or ".") / "bench_models")


def bench_config(model_dir: str, args):
    """The TrainConfig `honed bench`'s flags stand for (peer_bench.py's optimizer: AdamW lr 1e-4,
    torch's default weight decay 0.01, no schedule)."""
    from honed.config import config_from_dict

    return config_from_dict({
        "model": {"name_or_path": model_dir},
        "data": {"train": ["<random tokens>"], "max_seq_length": args.seq, "packing": True},
        "method": "qlora" if args.qlora else "lora",
        "objective": getattr(args, "objective", "sft"),
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0, "target_modules": TARGETS},
        "training": {"batch_size": args.batch, "learning_rate": 1e-4, "weight_decay": 0.01, "lr_scheduler": "constant", "warmup_ratio": 0.0,
                     "precision": getattr(args, "precision", "bf16"),
                     "engine": args.engine, "memory": args.memory, "memory_budget_gib": args.memory_budget_gib,
                     "host_memory_gib": getattr(args, "host_memory_gib", None), "host_mlp_layers": getattr(args, "host_mlp_layers", 0),
                     "device": "cuda",
                     "cuda_graphs": getattr(args, "cuda_graphs", False),
                     "embeddings_on_host": {"auto": None, "yes": True, "no": False}[getattr(args, "embeddings_on_host", "auto")],
                     "max_grad_norm": getattr(args, "max_grad_norm", 1.0)},
    }, where="honed bench")


def build_bench_run(cfg, *, total_steps: int, fp32_embeddings: bool = False, device=None):
    """A TrainingRun of `cfg` (on CUDA unless `device` says otherwise), built by `honed train`'s set-up
    parts, without data or outputs."""
    import torch

    from honed.engine import select_path
    from honed.engine.settings import resolve_engine_settings
    from honed.train.objectives import get_objective
    from honed.train.recipe import TrainingRun, build_optimization, finish_training_model, load_base_model, prepare_training_path
    from honed.utils.seed import set_seed

    settings = resolve_engine_settings(cfg, device or torch.device("cuda"))  # as honed train does
    set_seed(cfg.training.seed)
    model, info = finish_training_model(*load_base_model(cfg, settings.device), cfg)
    path = select_path(model, settings)
    if fp32_embeddings and hasattr(path, "restore_embeddings"):
        path.restore_embeddings = False
    path, model = prepare_training_path(model, settings, path)
    optimizer, scheduler, scaler = build_optimization(model, cfg, settings, total_steps)
    objective = get_objective(cfg)
    if hasattr(objective, "configure"):  # preference objectives read the `preference:` section (reference: adapter off)
        objective.configure(cfg)
    return TrainingRun(cfg=cfg, settings=settings, model=model, path=path, objective=objective, optimizer=optimizer, scheduler=scheduler,
                       scaler=scaler, params=[p for p in model.parameters() if p.requires_grad], measure_grad_norm=False, info=info)


def bench_step(run, batch: dict):
    """One optimizer step on one micro-batch: `honed train`'s train_step. The loss stays on the GPU."""
    from honed.train.recipe import train_step

    return train_step(run, [batch]).micro_losses[0]


def pinned_batch(micro_batch, padding_free: bool) -> dict:
    """A real-data micro-batch collated before timing, as every stack does; pinned for async copies."""
    from honed.data.packing import collate

    batch = collate(micro_batch, packing=True, pad_id=PAD_ID, padding_free=padding_free)
    return {k: v.pin_memory() for k, v in batch.items()}


def run_bench(args) -> dict:
    """Build the run, time the steps, and return the RESULT fields (see the module docstring)."""
    import torch

    from honed.engine import nf4
    from honed.engine.fused import causal_lm_of

    lengths_spec = getattr(args, "lengths", None)
    objective = getattr(args, "objective", "sft")
    if objective != "sft" and lengths_spec:
        raise HonedError("--lengths times SFT on real-data lengths; with --objective dpo/orpo/simpo/kto leave it out (random pairs of --seq tokens)")
    if not torch.cuda.is_available():
        raise HonedError("honed bench needs a CUDA GPU")
    data = None
    if lengths_spec:  # before loading the model, so a wrong --lengths fails at once
        data = bench_data(lengths_spec, vocab_size=SHAPES[args.shape]["vocab_size"], seq=args.seq, batch=args.batch,
                          warmup=args.warmup, steps=args.steps, samples=getattr(args, "samples", None))
    from honed.engine.memory import available_host_bytes

    host = host_fields(available_host_bytes())  # before the model loads: what the run started with
    models = getattr(args, "models", None) or default_models_dir(getattr(args, "work_dir", None))
    cfg = bench_config(build_shape(args.shape, models), args)
    t = cfg.training
    run = build_bench_run(cfg, total_steps=args.warmup + args.steps, fp32_embeddings=args.fp32_embeddings)
    model, path, step = run.model, run.path, functools.partial(bench_step, run)

    res = dict(
        stack="honed", path=path.name,
        shape=args.shape, qlora=args.qlora, seq=args.seq, batch=args.batch, precision=t.precision, max_grad_norm=t.max_grad_norm,
        embeddings=str(next(iter(causal_lm_of(model).get_input_embeddings().parameters())).dtype).removeprefix("torch."),
        embeddings_on_host=bool(path.describe().get("embeddings_on_host", False)), **host,
    )
    if args.qlora:  # which code dequantised the NF4 weights (engine.nf4)
        res["nf4_dequantisation"] = "bitsandbytes" if nf4.kernel_unavailable_reason() else "honed-triton"
    if objective != "sft":
        # `--batch` pairs a micro-batch, each two sequences of `--seq` tokens sharing a prompt of seq/2 (bench.preference);
        # a step is the policy forward of both, the reference forward with the adapter off (DPO, KTO) and one backward.
        from honed.bench.preference import random_pair_batches

        batches = random_pair_batches(vocab_size=model.config.vocab_size, first_token_id=FIRST_TOKEN_ID, seq=args.seq, batch=args.batch,
                                      n_batches=4, pad_id=PAD_ID, padding_free=path.padding_free, kto=objective == "kto")
        in_order = [batches[i] for i in batch_order(args.warmup, args.steps, len(batches))]
        losses, warmup_s, dt, each = time_steps(step, in_order[: args.warmup], in_order[args.warmup :])
        described = path.describe()
        graph_pool = described.get("cuda_graph_pool_bytes", 0)
        tps = args.steps * 2 * args.batch * args.seq / dt  # both sequences of every pair
        res.update(objective=objective, reference=getattr(run.objective, "reference", None) if run.objective.uses_reference else None,
                   pairs_per_s=round(args.steps * args.batch / dt, 2), tokens_per_s=round(tps, 1), step_s=round(dt / args.steps, 4),
                   **memory_fields(graph_pool))
    elif data is None:
        g = torch.Generator(device="cpu").manual_seed(DATA_SEED)  # the same batches as peer_bench.py
        vocab = model.config.vocab_size
        batches = [torch.randint(FIRST_TOKEN_ID, vocab, (args.batch, args.seq), generator=g) for _ in range(4)]
        in_order = [{"input_ids": batches[i], "labels": batches[i]} for i in batch_order(args.warmup, args.steps, len(batches))]
        losses, warmup_s, dt, each = time_steps(step, in_order[: args.warmup], in_order[args.warmup :])
        described = path.describe()  # after the steps: an out-of-memory fallback may have changed the plan
        graph_pool = described.get("cuda_graph_pool_bytes", 0)  # a memory snapshot: taken once, after the timed steps
        tps = args.steps * args.batch * args.seq / dt
        res.update(tokens_per_s=round(tps, 1), step_s=round(dt / args.steps, 4), **memory_fields(graph_pool),
                   mfu_lora_pct=round(100 * tps * flops_per_token(model.config, args.seq) / args.peak_tflops / 1e12, 1))
    else:
        # Padding-free (one row, no padding) where the path's attention takes varlen input, as honed train decides.
        padding_free = path.padding_free
        warm, timed = [pinned_batch(mb, padding_free) for mb in data.warmup], [pinned_batch(mb, padding_free) for mb in data.timed]
        losses, warmup_s, dt, each = time_steps(step, warm, timed)
        described = path.describe()
        graph_pool = described.get("cuda_graph_pool_bytes", 0)
        res.update(lengths=lengths_spec, layout="padding-free" if padding_free else "packed", padding_free=padding_free,
                   attention=described.get("attention") or getattr(model.config, "_attn_implementation", None),
                   **packed_result_fields(data, timed, losses[args.warmup :], dt, model.config, args.peak_tflops, graph_pool))
    plan = described.get("memory_plan")
    if described.get("cuda_graphs") is not None:
        res.update(cuda_graphs=described["cuda_graphs"], graph_pool_gib=round(graph_pool / 2**30, 2))
    res.update(loss=round(losses[-1], 3), losses=[round(x, 4) for x in losses], warmup_s=round(warmup_s, 1), **step_spread_fields(each),
               trainable=sum(p.numel() for p in run.params),
               memory=plan["mode"] if plan else ("checkpoint" if t.gradient_checkpointing else "none"),
               recomputed_layers=plan["checkpointed"] if plan else None, whole_mlp=bool(plan and plan["whole_mlp"]),
               # False: recomputed layers rebuild o_proj too, because the host looked short of memory for it (None: none recompute)
               keeps_o_proj_output=bool(plan["keep_o"]) if plan and plan["checkpointed"] else None,
               host_mlp_layers=plan["host_mlp"] if plan else 0)
    if described.get("host_mlp_choice") is not None:  # host_mlp_layers auto: what was measured, what it chose
        res["host_mlp_choice"] = described["host_mlp_choice"]
    if "derived_saves" in described:  # the fused path: norm and SwiGLU outputs derived in backward (HONED_DERIVED_SAVES)
        res["derived_saves"] = described["derived_saves"]
    if described.get("fp8_choice") is not None:  # precision fp8 under memory auto: what was measured, which bases it chose
        res["fp8_choice"] = described["fp8_choice"]
    return res
