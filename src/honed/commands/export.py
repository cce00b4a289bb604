"""`honed export`: merged HF safetensors, GGUF (+ llama.cpp quantisation), or an Ollama folder."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="export a tuned model: merged HF weights, GGUF, or Ollama",
                       description="Export a model, adapter or `honed train` run folder. The export is loaded back by an "
                                   "independent runtime and compared with the torch model (see verification.json).")
    p.add_argument("--model", required=True, help="model folder, adapter folder, training run folder, or hub id")
    p.add_argument("--adapter", help="a LoRA adapter (or run) folder to merge into --model")
    p.add_argument("--format", dest="fmt", choices=["hf", "gguf", "ollama"], default="hf")
    p.add_argument("--quant", help="GGUF type: f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k, q4_0 (default f16)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty, unless --overwrite)")
    p.add_argument("--dtype", choices=["bf16", "f16"], help="16-bit type of merged weights (default: the base's, else bf16)")
    p.add_argument("--qlora-base", choices=["dequantized", "original"], default="dequantized",
                   help="QLoRA runs: merge into the dequantised NF4 base (exact, needs CUDA) or the original 16-bit base")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip loading the export back and comparing")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder that holds files")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from honed.export.pipeline import export_model

    result = export_model(args.model, adapter=args.adapter, fmt=args.fmt, quant=args.quant, out=args.out,
                          verify=args.verify, overwrite=args.overwrite, dtype=args.dtype, qlora_base=args.qlora_base,
                          trust_remote_code=args.trust_remote_code)
    if not result.passed:
        print(f"error: the export in {result.out_dir} does not reproduce the torch model (see verification.json); "
              "it was kept for inspection", file=sys.stderr)
        return 1
    return 0
