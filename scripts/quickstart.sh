#!/usr/bin/env bash
# Set up and run `honed quickstart` (built-in data, tiny built-in model, CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
# The quickstart needs no GGUF tools: skip compiling llama.cpp (scripts/setup.sh installs it otherwise).
HONED_NO_EXPORT="${HONED_NO_EXPORT:-1}" bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/honed quickstart "$@"
