#!/usr/bin/env python
"""Build tiny random models of each supported family into OUT_DIR/<family>/ (offline).

    python scripts/make_tiny_models.py /tmp/tiny                       # every family
    python scripts/make_tiny_models.py /tmp/tiny --families llama3 qwen3 --hidden-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from honed.testing import FAMILIES, build_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES), metavar="FAMILY",
                        help=f"families to build (default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    for family in args.families:
        out = build_tiny_model(family, args.out_dir / family, hidden_size=args.hidden_size, layers=args.layers,
                               seed=args.seed, dtype=args.dtype)
        print(f"{family:8s} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
