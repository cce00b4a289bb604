"""`honed bench`: tokens/s, memory and MFU of `honed train`'s training step on one GPU.

Builds the same random-init model shape as the peer benchmark (../shared/bench/peer_bench.py, whose
`cmd:` stack runs this with the same arguments), then runs honed's own step: load_model → apply_lora →
select_path/prepare → build_optimizer → the path's loss_sum under autocast (`--precision`, as
`training.precision`), backward, gradient clipping (`--max-grad-norm`, 1.0 as in `honed train`;
0 or none: no clipping, as the peers), AdamW. Prints one line `RESULT {json}`. Two kinds of data:

- random shape (the default): `--batch` rows of `--seq` random tokens, peer_bench.py's batches in its
  order (warm-up steps take batches 0, 1, …; the timed steps start again from batch 0), so each
  step's loss compares with the peers' loss of the same step;
- real-data lengths (`--lengths alpaca`): samples of varying length drawn from a shipped distribution
  (resources/bench/), filled with seeded random tokens and packed by honed's own packing
  (`data.packing`: `--batch` rows of up to `--seq` tokens a micro-batch), one optimizer step per
  micro-batch. It reports effective (non-padding) tokens/s. benchmarks/packed_peers.py feeds the
  same micro-batches to HF+PEFT and Unsloth.

    honed bench --shape llama-1b --seq 2048 --batch 4 --steps 10 --warmup 3 [--max-grad-norm 0]
    honed bench --shape llama-1b --seq 2048 --batch 4 --steps 10 --warmup 3 --lengths alpaca
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time

from honed.commands.bench_data import (
    DATA_SEED,
    FIRST_TOKEN_ID,
    LENGTH_DISTRIBUTIONS,
    PAD_ID,
    BenchData,
    attended_length,
    bench_data,
    length_stats,
    throughput,
    trained_tokens,
    weighted_mean_loss,
)

SHAPES = {  # identical to peer_bench.py's
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True, head_dim=64),
    "llama-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False, head_dim=128),
    "qwen-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                      num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0, tie_word_embeddings=False),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def max_grad_norm(text: str) -> float | None:
    """`--max-grad-norm`: a positive number, or 0 / none / off for no clipping.

    >>> max_grad_norm("1"), max_grad_norm("0.5"), max_grad_norm("0"), max_grad_norm("None")
    (1.0, 0.5, None, None)
    """
    import argparse

    if text.strip().lower() in ("0", "0.0", "none", "off", "inf"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, or 0/none for no clipping: {text!r}")
    return value


def positive_int(text: str) -> int:
    """`--samples`: a whole number above 0.

    >>> positive_int("500")
    500
    """
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def batch_order(warmup: int, steps: int, n_batches: int = 4) -> list[int]:
    """Which batch each step trains on: peer_bench.py restarts its step count after warm-up.

    >>> batch_order(3, 6)
    [0, 1, 2, 0, 1, 2, 3, 0, 1]
    """
    return [i % n_batches for i in range(warmup)] + [i % n_batches for i in range(steps)]


def register(sub) -> None:
    p = sub.add_parser("bench", help="tokens/s, peak memory and MFU of the training step on a random-init model shape "
                                     "(random rows, or packed real-data lengths)")
    p.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--qlora", action="store_true", help="4-bit NF4 base (bitsandbytes)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="measured bf16 matmul ceiling of the card")
    p.add_argument("--engine", default="auto", choices=["auto", "plain"], help="training.engine")
    p.add_argument("--memory", default="auto", choices=["auto", "none", "checkpoint", "offload"], help="training.memory")
    p.add_argument("--memory-budget-gib", type=float, default=None, help="training.memory_budget_gib")
    p.add_argument("--cuda-graphs", action="store_true", help="training.cuda_graphs: the decoder stack replays as CUDA graphs")
    p.add_argument("--embeddings-on-host", default="auto", choices=["auto", "yes", "no"],
                   help="training.embeddings_on_host: auto moves the frozen input embeddings to host memory when layers recompute")
    p.add_argument("--max-grad-norm", type=max_grad_norm, default=1.0,
                   help="training.max_grad_norm (default 1.0, as honed train); 0 or none: no clipping (the peers do not clip)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp8"], help="training.precision (default bf16, as the peers)")
    p.add_argument("--lengths", metavar="NAME|FILE", default=None,
                   help=f"real-data mode: variable-length samples drawn from a shipped length distribution ({', '.join(LENGTH_DISTRIBUTIONS)}) "
                        "or a JSON histogram file of the same form, packed as honed train packs them; reports effective (non-padding) tokens/s")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="with --lengths: how many samples to draw (default: as many as the warm-up and timed micro-batches take; "
                        "with fewer, the micro-batches repeat)")
    p.add_argument("--fp32-embeddings", action="store_true",
                   help="QLoRA: keep peft's fp32 embeddings and lm_head on the fused path (the old behaviour, to compare)")
    p.add_argument("--models", default=os.environ.get("BENCH_MODELS", "/tmp/bench_models"), help="where shapes are saved (shared with peer_bench.py)")
    p.set_defaults(func=run)


def n_matmul_params(cfg) -> int:
    d, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    attn = d * hd * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2)
    return layers * (attn + 3 * d * f) + vocab * d


def flops_per_token(cfg, seq: float) -> float:
    """peer_bench.py's estimate: forward + input-gradient backward, attention included, no recompute.

    `seq` is how many keys a token attends to on average: the row length for random rows, and
    `attended_length` of the samples for packed ones (a token sees only its own sample).
    """
    return 4 * n_matmul_params(cfg) + 4 * cfg.num_hidden_layers * seq * cfg.hidden_size


def build_shape(shape: str, root: str) -> str:
    """Save a random-init bf16 model of `shape` with a stand-in tokenizer (as peer_bench.py does)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = os.path.join(root, shape)
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    kw = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(cfg.vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", pad_token="t3", unk_token="t0").save_pretrained(out)
    del model
    return out


def time_steps(step, warmup_batches: list, timed_batches: list) -> tuple[list, float, float, list[float]]:
    """Run the warm-up steps, reset the peak-memory counter, time the rest: (losses, warm-up s, timed s,
    each timed step's seconds). The steps are not synchronised one by one (that would change what is
    timed): CUDA events at the step boundaries give each step's span on the GPU's timeline."""
    import torch

    losses = []
    t_warm = time.perf_counter()
    for batch in warmup_batches:
        losses.append(step(batch))
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_warm
    torch.cuda.reset_peak_memory_stats()
    boundaries = [torch.cuda.Event(enable_timing=True) for _ in range(len(timed_batches) + 1)]
    t0 = time.perf_counter()
    boundaries[0].record()
    for batch, done in zip(timed_batches, boundaries[1:]):
        losses.append(step(batch))
        done.record()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    each = [start.elapsed_time(end) / 1000 for start, end in itertools.pairwise(boundaries)]
    return [float(x) for x in losses], warmup_s, seconds, each


def step_spread_fields(step_seconds: list[float]) -> dict:
    """RESULT keys for how steady the timed steps were: each step's seconds, their median, and the
    spread (slowest minus fastest) as a percentage of the median. A step the host cannot launch fast
    enough (many small kernels, as in a recomputed layer) varies with the machine's CPU, so a mean
    over few steps can move by more than the difference being measured.

    >>> step_spread_fields([0.4, 0.5, 0.45])
    {'step_s_each': [0.4, 0.5, 0.45], 'step_s_median': 0.45, 'step_s_spread_pct': 22.2}
    """
    median = statistics.median(step_seconds)
    return {"step_s_each": [round(x, 4) for x in step_seconds], "step_s_median": round(median, 4),
            "step_s_spread_pct": round(100 * (max(step_seconds) - min(step_seconds)) / median, 1)}


def memory_fields(pool_bytes: int = 0) -> dict:
    """Peak GPU memory since the last reset (the timed steps), allocated and reserved, in GiB.

    A replayed CUDA graph allocates nothing, so the activations it writes (in its own pool, reserved
    when it was captured) are not in the allocated peak: `pool_bytes` (`graph_pool_bytes`) is added to it, which
    counts the pool at its full size, fragmentation included (an upper bound)."""
    import torch

    return {"peak_alloc_gib": round((torch.cuda.max_memory_allocated() + pool_bytes) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def packed_result_fields(data: BenchData, timed_batches: list, timed_losses: list[float], seconds: float, model_config, peak_tflops: float,
                         pool_bytes: int = 0) -> dict:
    """The RESULT keys of a real-data run, shared with benchmarks/packed_peers.py so every stack counts alike."""
    flow = throughput(timed_batches, seconds)
    lengths = data.timed_lengths()
    flops = flops_per_token(model_config, attended_length(lengths))
    return dict(
        lengths_stats=length_stats(lengths), samples=len(lengths), rows=sum(len(mb) for mb in data.timed),
        micro_batches=len(timed_batches), layout_rows=sum(b["input_ids"].shape[0] for b in timed_batches),
        drawn=data.drawn, data_sha=data.fingerprint(), **flow, step_s=round(seconds / len(timed_batches), 4), **memory_fields(pool_bytes),
        mfu_lora_pct=round(100 * flow["effective_tokens_per_s"] * flops / peak_tflops / 1e12, 1),
        loss_mean=round(weighted_mean_loss(timed_losses, [trained_tokens(b) for b in timed_batches]), 4),
    )


def graph_pool_bytes(path) -> int:
    """GPU memory held by the path's CUDA graphs (training.cuda_graphs), 0 without them."""
    graphs = getattr(path, "graphs", None)
    return graphs.held_bytes() if graphs is not None else 0


def bench_config(model_dir: str, args):
    from honed.config import config_from_dict

    return config_from_dict({
        "model": {"name_or_path": model_dir},
        "data": {"train": ["<random tokens>"], "max_seq_length": args.seq, "packing": True},
        "method": "qlora" if args.qlora else "lora",
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0, "target_modules": TARGETS},
        # peer_bench.py's optimizer: AdamW lr 1e-4, torch's default weight decay 0.01
        "training": {"batch_size": args.batch, "learning_rate": 1e-4, "weight_decay": 0.01, "precision": getattr(args, "precision", "bf16"),
                     "engine": args.engine, "memory": args.memory, "memory_budget_gib": args.memory_budget_gib, "device": "cuda",
                     "cuda_graphs": getattr(args, "cuda_graphs", False),
                     "embeddings_on_host": {"auto": None, "yes": True, "no": False}[getattr(args, "embeddings_on_host", "auto")],
                     "max_grad_norm": getattr(args, "max_grad_norm", 1.0)},
    }, where="honed bench")


def run(args) -> int:
    import torch

    from honed.data.packing import collate
    from honed.engine import nf4, select_path, with_memory_fallback
    from honed.engine.fused import causal_lm_of
    from honed.model.adapters import apply_lora
    from honed.model.load import load_model
    from honed.train.optim import build_optimizer
    from honed.train.sft import autocast_context, resolve_precision

    if not torch.cuda.is_available():
        print("error: honed bench needs a CUDA GPU")
        return 2
    lengths_spec = getattr(args, "lengths", None)
    data = None
    if lengths_spec:  # before loading the model, so a wrong --lengths fails at once
        data = bench_data(lengths_spec, vocab_size=SHAPES[args.shape]["vocab_size"], seq=args.seq, batch=args.batch,
                          warmup=args.warmup, steps=args.steps, samples=getattr(args, "samples", None))
    cfg = bench_config(build_shape(args.shape, args.models), args)
    t = cfg.training
    device = torch.device("cuda")
    precision = resolve_precision(t.precision, device)  # as honed train does
    torch.manual_seed(t.seed)
    model, info = load_model(cfg.model, device=device, quantization=cfg.quantization if args.qlora else None)
    model = apply_lora(model, cfg.lora, quantized=info["quantized"], gradient_checkpointing=t.gradient_checkpointing)
    path = select_path(model, cfg, device)
    if args.fp32_embeddings and hasattr(path, "restore_embeddings"):
        path.restore_embeddings = False
    model = path.prepare(model)
    model.train()
    optimizer = build_optimizer(model, t)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: dict):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}

        def forward_backward():
            with autocast_context(precision, device):
                loss_sum, n = path.loss_sum(model, batch)
            loss = loss_sum / max(n, 1)
            loss.backward()
            return loss

        loss = with_memory_fallback(path, model, forward_backward)  # as honed train: a leaner plan if this one does not fit
        if t.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    res = dict(
        stack="honed", path=path.name,
        shape=args.shape, qlora=args.qlora, seq=args.seq, batch=args.batch, precision=t.precision, max_grad_norm=t.max_grad_norm,
        embeddings=str(next(iter(causal_lm_of(model).get_input_embeddings().parameters())).dtype).removeprefix("torch."),
        embeddings_on_host=bool(getattr(path, "embeddings_on_host", False)),
    )
    if args.qlora:  # which code dequantised the NF4 weights (engine.nf4)
        res["nf4_dequantisation"] = "bitsandbytes" if nf4.kernel_unavailable_reason() else "honed-triton"
    if data is None:
        g = torch.Generator(device="cpu").manual_seed(DATA_SEED)  # the same batches as peer_bench.py
        vocab = model.config.vocab_size
        batches = [torch.randint(FIRST_TOKEN_ID, vocab, (args.batch, args.seq), generator=g) for _ in range(4)]
        in_order = [{"input_ids": batches[i], "labels": batches[i]} for i in batch_order(args.warmup, args.steps, len(batches))]
        losses, warmup_s, dt, each = time_steps(step, in_order[: args.warmup], in_order[args.warmup :])
        graph_pool = graph_pool_bytes(path)  # a memory snapshot: taken once, after the timed steps
        tps = args.steps * args.batch * args.seq / dt
        res.update(tokens_per_s=round(tps, 1), step_s=round(dt / args.steps, 4), **memory_fields(graph_pool),
                   mfu_lora_pct=round(100 * tps * flops_per_token(model.config, args.seq) / args.peak_tflops / 1e12, 1))
    else:
        # Padding-free (one row, no padding) where the path's attention takes varlen input, as honed train decides.
        padding_free = path.padding_free

        def as_batch(micro_batch) -> dict:  # collated before timing, as every stack does; pinned for async copies
            batch = collate(micro_batch, packing=True, pad_id=PAD_ID, padding_free=padding_free)
            return {k: v.pin_memory() for k, v in batch.items()}

        warm, timed = [as_batch(mb) for mb in data.warmup], [as_batch(mb) for mb in data.timed]
        losses, warmup_s, dt, each = time_steps(step, warm, timed)
        graph_pool = graph_pool_bytes(path)
        res.update(lengths=lengths_spec, layout="padding-free" if padding_free else "packed", padding_free=padding_free,
                   attention=getattr(path, "attention", None) or getattr(model.config, "_attn_implementation", None),
                   **packed_result_fields(data, timed, losses[args.warmup :], dt, model.config, args.peak_tflops, graph_pool))
    plan = getattr(path, "plan", None)  # read after the steps: an out-of-memory fallback may have changed it
    graphs = getattr(path, "graphs", None)
    if graphs is not None:
        res.update(cuda_graphs=graphs.summary(), graph_pool_gib=round(graph_pool / 2**30, 2))
    res.update(loss=round(losses[-1], 3), losses=[round(x, 4) for x in losses], warmup_s=round(warmup_s, 1), **step_spread_fields(each),
               trainable=sum(p.numel() for p in params),
               memory=plan.mode if plan else ("checkpoint" if t.gradient_checkpointing else "none"),
               recomputed_layers=plan.checkpointed if plan else None, whole_mlp=bool(plan and plan.whole_mlp))
    print("RESULT " + json.dumps(res), flush=True)
    return 0
