#!/usr/bin/env bash
# Set up and run `honed quickstart` (built-in data, tiny built-in model, CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/honed quickstart "$@"
