#!/usr/bin/env bash
# Set up honed in ./.venv (created if missing). Usage: bash scripts/setup.sh [EXTRAS]
#   EXTRAS: comma-separated optional groups, e.g. "test" or "test,gpu". The "export" group
#   (llama-cpp-python, for GGUF quantisation and checks) is always installed: pip compiles
#   llama.cpp from source, which takes several minutes the first time. HONED_NO_EXPORT=1 skips it.
# On a machine without an NVIDIA GPU this installs the CPU build of PyTorch first, so that
# resolving honed's `torch` requirement never pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of PyTorch"
    pip install "torch>=2.11"
  else
    echo "setup: no GPU, installing the CPU build of PyTorch"
    # A local CPU wheel (e.g. on pip's find-links) first, else PyTorch's CPU index.
    pip install "torch==2.13.0+cpu" 2>/dev/null || pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
      || pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

[ "${HONED_NO_EXPORT:-0}" = "1" ] || extras="export${extras:+,$extras}"
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
case ",$extras," in *,export,*) echo "setup: building llama-cpp-python from source (several minutes the first time)";; esac
pip install -e "$spec"
python -c "import honed, torch; print(f'setup: honed {honed.__version__} with torch {torch.__version__} in .venv')"
