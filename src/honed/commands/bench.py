"""`honed bench`: tokens/s, memory and MFU of `honed train`'s training step on one GPU.

The arguments only; the benchmark itself is the library's (`honed.bench.run.run_bench`: the same
set-up parts and `train_step` as `honed train`, on a random-init model shape). Prints one line
`RESULT {json}` (benchmarks/packed_peers.py and ../shared/bench/peer_bench.py read it).

    honed bench --shape llama-1b --seq 2048 --batch 4 --steps 10 --warmup 3 [--max-grad-norm 0]
    honed bench --shape llama-1b --seq 2048 --batch 4 --steps 10 --warmup 3 --lengths alpaca
"""

from __future__ import annotations

import json

from honed.bench.data import LENGTH_DISTRIBUTIONS
from honed.bench.shapes import SHAPES


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


def _whole_number(text: str, least: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}: {text!r}")
    return value


def positive_int(text: str) -> int:
    """`--samples`: a whole number above 0.

    >>> positive_int("500")
    500
    """
    return _whole_number(text, 1)


def _layers_or_auto(text: str) -> int | str:
    """`--host-mlp-layers`: a count of layers (0 or more) or `auto`.

    >>> _layers_or_auto("12"), _layers_or_auto("auto")
    (12, 'auto')
    """
    return text if text == "auto" else _whole_number(text, 0)


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
    p.add_argument("--host-memory-gib", type=float, default=None, help="training.host_memory_gib")
    p.add_argument("--host-mlp-layers", type=_layers_or_auto, default=0,
                   help="training.host_mlp_layers: kept layers whose gate/up activations wait in host memory (a count, or auto)")
    p.add_argument("--cuda-graphs", action="store_true", help="training.cuda_graphs: the decoder stack replays as CUDA graphs")
    p.add_argument("--embeddings-on-host", default="auto", choices=["auto", "yes", "no"],
                   help="training.embeddings_on_host: auto moves the frozen input embeddings to host memory when layers recompute")
    p.add_argument("--max-grad-norm", type=max_grad_norm, default=1.0,
                   help="training.max_grad_norm (default 1.0, as honed train); 0 or none: no clipping (the peers do not clip)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp8"], help="training.precision (default bf16, as the peers)")
    p.add_argument("--objective", default="sft", choices=["sft", "dpo", "orpo", "simpo", "kto"],
                   help="what a step trains: sft, or a preference objective on --batch random pairs of two --seq-token sequences "
                        "(DPO/KTO: reference forward with the LoRA adapter off)")
    p.add_argument("--lengths", metavar="NAME|FILE", default=None,
                   help=f"real-data mode: variable-length samples drawn from a shipped length distribution ({', '.join(LENGTH_DISTRIBUTIONS)}) "
                        "or a JSON histogram file of the same form, packed as honed train packs them; reports effective (non-padding) tokens/s")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="with --lengths: how many samples to draw (default: as many as the warm-up and timed micro-batches take; "
                        "with fewer, the micro-batches repeat)")
    p.add_argument("--fp32-embeddings", action="store_true",
                   help="QLoRA: keep peft's fp32 embeddings and lm_head on the fused path (the old behaviour, to compare)")
    p.add_argument("--work-dir", default=".", help="folder for what the benchmark writes (default: the current folder)")
    p.add_argument("--models", default=None,
                   help="where shapes are saved (default: $BENCH_MODELS, shared with peer_bench.py, else WORK_DIR/bench_models)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from honed.bench.run import run_bench

    if not torch.cuda.is_available():
        print("error: honed bench needs a CUDA GPU")
        return 2
    print("RESULT " + json.dumps(run_bench(args)), flush=True)
    return 0
