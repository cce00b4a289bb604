"""What fp8 does to the frozen-base matmuls of one decoder layer, measured on this GPU.

For each LoRA base projection of a shape (q/k/v and gate/up as the one grouped matrix each that
honed's fused path stores), at the run's tokens per micro-batch, it times with CUDA events:

  bf16    forward y = x Wᵀ and backward dx = dy W in bf16 (what `precision: bf16` runs)
  fp8     honed's fp8 forward and dgrad (`engine.fp8.fp8_linear` / `fp8_dgrad`): the rowwise
          quantisation of x and dy, the transposed fp8 copy of W and `torch._scaled_mm`
  fp8-bf16dx  fp8 forward, dx in bf16 from W dequantised (HONED_FP8_BACKWARD=0)

and prints per projection and per layer (summed) milliseconds, and the layer's fp8/bf16 ratio: below
1 fp8 makes each matmul pass faster; a recomputed layer runs the forward twice.

  python benchmarks/fp8_matmuls.py --shape llama-8b --tokens 4096 [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from honed.bench.shapes import SHAPES
from honed.engine import fp8
from honed.engine.fp8_choice import median_ms


def projections(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each base matmul one layer runs, with q/k/v and gate/up grouped as honed stores them."""
    d, f = shape["hidden_size"], shape["intermediate_size"]
    heads = shape["num_attention_heads"]
    hd = shape.get("head_dim") or d // heads
    kv = shape.get("num_key_value_heads", heads) * hd
    return {"qkv": (d, heads * hd + 2 * kv), "o": (heads * hd, d), "gate_up": (d, 2 * f), "down": (f, d)}


def measure(shape_name: str, tokens: int) -> dict:
    torch.manual_seed(0)
    rows = {}
    for name, (n_in, n_out) in projections(SHAPES[shape_name]).items():
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in**0.5
        x = torch.randn(tokens, n_in, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(tokens, n_out, device="cuda", dtype=torch.bfloat16)
        w_fp8, scale = fp8.quantize_weight_rowwise(w)
        rows[name] = {
            "bf16_fwd": median_ms(lambda: x @ w.t()),
            "bf16_dx": median_ms(lambda: dy @ w),
            "fp8_fwd": median_ms(lambda: fp8.fp8_linear(x, w_fp8, scale)),
            "fp8_dx": median_ms(lambda: fp8.fp8_dgrad(dy, w_fp8, scale)),
            "dequant_dx": median_ms(lambda: dy @ fp8.dequantize_weight(w_fp8, scale, torch.bfloat16)),
        }
        del w, x, dy, w_fp8, scale
    layer = {key: sum(r[key] for r in rows.values()) for key in next(iter(rows.values()))}
    return {"shape": shape_name, "tokens": tokens, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "projections": rows, "layer": layer,
            "fp8_over_bf16": (layer["fp8_fwd"] + layer["fp8_dx"]) / (layer["bf16_fwd"] + layer["bf16_dx"]),
            "fp8_bf16dx_over_bf16": (layer["fp8_fwd"] + layer["dequant_dx"]) / (layer["bf16_fwd"] + layer["bf16_dx"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-8b", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch (batch × sequence)")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args()
    res = measure(args.shape, args.tokens)
    print(f"{res['device']}, torch {res['torch']}: {args.shape}, {args.tokens} tokens, median ms of 5")
    print(f"{'projection':<10} {'bf16 fwd':>9} {'bf16 dx':>8} {'fp8 fwd':>8} {'fp8 dx':>7} {'deq dx':>7}")
    for name, r in [*res["projections"].items(), ("layer", res["layer"])]:
        print(f"{name:<10} {r['bf16_fwd']:9.3f} {r['bf16_dx']:8.3f} {r['fp8_fwd']:8.3f} {r['fp8_dx']:7.3f} {r['dequant_dx']:7.3f}")
    print(f"FP8_MATMULS fp8/bf16 {res['fp8_over_bf16']:.3f}  fp8 fwd + bf16 dx / bf16 {res['fp8_bf16dx_over_bf16']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
