"""What fp8 does to the frozen-base matmuls of one decoder layer, measured on this GPU.

For each set of LoRA base projections of a shape, as honed's fused path stores them (q/k/v and
gate/up as one matrix each in fp8, one matmul per projection in bf16; o and down alone), at the
run's tokens per micro-batch, it times with CUDA events the forward y = x Wᵀ and the backward
dx = dy W both ways, with `engine.fp8_choice.time_base_matmuls`, the same timing the fused path's
fp8 choice makes:

  bf16    what `precision: bf16` runs
  fp8     honed's fp8 forward and dgrad (`engine.fp8`): the rowwise quantisation of x and dy, the
          transposed fp8 copy of W and `torch._scaled_mm`

and prints milliseconds per set and per layer, and the layer's fp8/bf16 ratio: below 1, fp8 makes
each matmul pass faster.

  python benchmarks/fp8_matmuls.py --shape llama-8b --tokens 4096 [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from honed.bench.shapes import SHAPES
from honed.engine.fp8_choice import time_base_matmuls


def projection_sets(shape: dict) -> dict[str, list[tuple[int, int]]]:
    """(out, in) of each base weight one layer has, in the sets that read one input."""
    d, f = shape["hidden_size"], shape["intermediate_size"]
    heads = shape["num_attention_heads"]
    hd = shape.get("head_dim") or d // heads
    kv = shape.get("num_key_value_heads", heads) * hd
    return {"qkv": [(heads * hd, d), (kv, d), (kv, d)], "o": [(d, heads * hd)], "gate_up": [(f, d), (f, d)], "down": [(d, f)]}


def measure(shape_name: str, tokens: int) -> dict:
    torch.manual_seed(0)
    rows = {}
    for name, sizes in projection_sets(SHAPES[shape_name]).items():
        weights = [torch.randn(out, n_in, device="cuda", dtype=torch.bfloat16) / n_in**0.5 for out, n_in in sizes]
        timed = time_base_matmuls(weights, tokens, torch.device("cuda"))
        rows[name] = {f"{p}_{d}": timed[p][i] for p in ("bf16", "fp8") for i, d in enumerate(("fwd", "dx"))}
        del weights
    layer = {key: sum(r[key] for r in rows.values()) for key in next(iter(rows.values()))}
    return {"shape": shape_name, "tokens": tokens, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "projections": rows, "layer": layer,
            "fp8_over_bf16": (layer["fp8_fwd"] + layer["fp8_dx"]) / (layer["bf16_fwd"] + layer["bf16_dx"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-8b", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch (batch × sequence)")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args()
    res = measure(args.shape, args.tokens)
    print(f"{res['device']}, torch {res['torch']}: {args.shape}, {args.tokens} tokens, median ms of 5")
    print(f"{'projection':<10} {'bf16 fwd':>9} {'bf16 dx':>8} {'fp8 fwd':>8} {'fp8 dx':>7}")
    for name, r in [*res["projections"].items(), ("layer", res["layer"])]:
        print(f"{name:<10} {r['bf16_fwd']:9.3f} {r['bf16_dx']:8.3f} {r['fp8_fwd']:8.3f} {r['fp8_dx']:7.3f}")
    print(f"FP8_MATMULS fp8/bf16 {res['fp8_over_bf16']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
