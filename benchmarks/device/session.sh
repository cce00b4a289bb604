#!/usr/bin/env bash
# The command of a GPU device call (run in the root of the tree's copy there, carry .whl .peer .bench):
#   [ENV=...] bash benchmarks/device/session.sh PART[,PART...]
# Parts run in the order given: tests matrix fp8 longest peers (their env vars are at each part_ function).
# Each part appends its output to $OUT/PART.log and adds one line to the summary printed at the end
# (also in $OUT/summary.log, with the set-up). LIMIT (seconds, default 540, the call is killed at 600)
# bounds the whole script: a part is not started with less than a minute left, a running one is stopped.
set -uo pipefail  # no -e: a failing part must not stop the parts after it
cd "$(dirname "$0")/../.."
ROOT=$PWD
KNOWN="tests matrix fp8 longest peers"
LIMIT=${LIMIT:-540}
SUMMARY=()
FAILED=0

IFS=', ' read -ra PARTS <<<"$*"
if ((${#PARTS[@]} == 0)); then echo "usage: bash benchmarks/device/session.sh PART[,PART...]; parts: $KNOWN"; exit 2; fi
for p in "${PARTS[@]}"; do
  [[ " $KNOWN " == *" $p "* ]] || { echo "unknown part '$p'; known parts: $KNOWN"; exit 2; }
done
[[ -n ${OUT:-} ]] || { echo "OUT is unset: the device machine sets it; elsewhere run with OUT=/some/folder"; exit 2; }
mkdir -p "$OUT"

# ---- helpers -------------------------------------------------------------------------------------

# note PART STATUS DETAIL: one line of the closing summary
note() {
  SUMMARY+=("$(printf '%-8s %-9s %s' "$1" "$2" "$3")")
  echo "== $1: $2: $3"
  [[ $2 == ok || $2 == budget ]] || FAILED=1
}

# status RC: the word for a command's exit status (timeout's 124/137: it ran into LIMIT)
status() {
  case $1 in 0) echo ok ;; 124 | 137) echo budget ;; *) echo "failed:$1" ;; esac
}

# run LOG CMD...: CMD with what is left of LIMIT, its output on the console and appended to $OUT/LOG.log
run() {
  local log=$1 left=$((LIMIT - SECONDS))
  shift
  if ((left < 10)); then echo "budget: no time left for: $*" | tee -a "$OUT/$log.log"; return 124; fi
  { printf '$'; printf ' %q' "$@"; echo "   # at most ${left}s"; } | tee -a "$OUT/$log.log"
  timeout -k 15 "$left" "$@" 2>&1 | tee -a "$OUT/$log.log"
  return "${PIPESTATUS[0]}"
}

# need PART WHAT...: true when every WHAT is there (cuda, py:MODULE, or a path); otherwise the part's
# summary line says what is missing
need() {
  local part=$1 w missing="" carried=""
  shift
  for w in "$@"; do
    case $w in
      cuda) ((HAVE_CUDA)) || missing+="; a CUDA GPU (torch.cuda.is_available() is false)" ;;
      py:*) python3 -c "import ${w#py:}" 2>/dev/null || { missing+="; python module ${w#py:}"; carried=1; } ;;
      *) [[ -e $w ]] || { missing+="; $w"; carried=1; } ;;
    esac
  done
  [[ -z $missing ]] && return 0
  [[ -z $carried ]] || missing+="; run benchmarks/device/prepare.sh before the call and carry .whl .peer .bench"
  note "$part" missing "${missing#; }"
  return 1
}

# results LOG: peer_bench's per-stack JSON lines of the command last run into $OUT/LOG.log, one phrase each
results() {
  python3 benchmarks/device/summarize.py results "$OUT/$1.log"
}

# ---- set-up --------------------------------------------------------------------------------------

setup() {
  # pydantic and its needs, which the image lacks (prepare.sh); a warm machine's /tmp/site is upgraded
  if compgen -G ".whl/*.whl" >/dev/null; then
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || echo "setup: installing .whl/*.whl failed: honed will not import"
  else
    echo "setup: no .whl/*.whl (run benchmarks/device/prepare.sh before the call, carry .whl): honed will not import"
  fi
  export PYTHONPATH=/tmp/site:$ROOT/src:$ROOT/.peer/site:$ROOT/.bench${PYTHONPATH:+:$PYTHONPATH}
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
  # one folder of random-init model shapes for every script (peer_bench's default; honed bench and
  # card_matrix.py would otherwise save their own copies in the tree)
  export BENCH_MODELS=${BENCH_MODELS:-/tmp/bench_models}

  nvidia-smi --query-gpu=name,memory.total --format=csv || echo "setup: no nvidia-smi"
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  local torch
  torch=$(python3 -c 'import torch; print(torch.__version__, int(torch.cuda.is_available()))' 2>/dev/null) || torch="none 0"
  HAVE_CUDA=${torch##* }
  echo "torch ${torch% *}, CUDA available: $HAVE_CUDA"

  # The copy of the tree may come without .git. card_matrix.py and longest_seq.py ask git for the
  # commit; where git cannot answer, a stand-in answers with the one prepare.sh recorded.
  if COMMIT=$(git rev-parse --short HEAD 2>/dev/null); then
    [[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || COMMIT+="+changes"
  else
    COMMIT=$(cat .bench/COMMIT 2>/dev/null) || { COMMIT=unknown; echo "setup: no .git and no .bench/COMMIT (prepare.sh writes it)"; }
    mkdir -p /tmp/commit-shim
    printf '#!/bin/sh\n# stands in for git: the commit prepare.sh recorded, and a clean status\n[ "$1" = rev-parse ] && echo %s\nexit 0\n' \
      "$COMMIT" >/tmp/commit-shim/git
    chmod +x /tmp/commit-shim/git
    export PATH=/tmp/commit-shim:$PATH
  fi
  echo "commit $COMMIT, parts: ${PARTS[*]}, LIMIT ${LIMIT}s"
}

# ---- parts ---------------------------------------------------------------------------------------

# tests: the GPU test suite. TESTS: the files (or pytest arguments) to run, default tests/gpu.
part_tests() {
  need tests cuda py:honed.config || return
  # shellcheck disable=SC2086  # TESTS is a list of words
  run tests python3 -m pytest -q -m gpu -x ${TESTS:-tests/gpu}
  local rc=$?
  note tests "$(status $rc)" "$(grep -E '[0-9]+ (passed|failed|skipped|errors?)|no tests ran' "$OUT/tests.log" | tail -1)"
}

# matrix: one card_matrix.py group. GROUP (cap16 cap24 cap48 cap80 full, default cap24), ROWS (comma
# list, default all five). Results merge into $OUT/matrix/card_matrix.json and .md as each stack ends.
part_matrix() {
  local group=${GROUP:-cap24}
  need matrix cuda py:honed.config .bench/peer_bench.py .peer/site/unsloth || return
  run matrix python3 benchmarks/card_matrix.py --group "$group" ${ROWS:+--rows "$ROWS"} --out "$OUT/matrix"
  local rc=$?
  note matrix "$(status $rc)" "$group: $(python3 benchmarks/device/summarize.py matrix "$OUT/matrix/card_matrix.json" "$group")"
}

# fp8: fp8 against bf16 base matmuls, then honed --precision fp8 beside bf16 under a FP8_CAP GiB cap
# (default 24, BENCHMARKS.md's fp8 section), with the fp8 choice (HONED_FP8_CHOICE=1) and without (0).
part_fp8() {
  need fp8 cuda py:honed.config .bench/peer_bench.py || return
  run fp8 python3 benchmarks/fp8_matmuls.py --shape llama-8b --tokens 4096
  local rc=$? ratio on off
  ratio=$(grep -o 'FP8_MATMULS fp8/bf16 [0-9.]*' "$OUT/fp8.log" | tail -1 | cut -d' ' -f3)
  local capped=(env BENCH_GPU_CAP_GIB="${FP8_CAP:-24}" PYTHONPATH="$ROOT/benchmarks/gpu_cap:$PYTHONPATH")
  local bench=(python3 .bench/peer_bench.py --shape llama-8b --seq 2048 --batch 2 --steps 8 --warmup 2 --timeout 300)
  run fp8 "${capped[@]}" HONED_FP8_CHOICE=1 "${bench[@]}" \
    --stacks "cmd:python3 -m honed bench --precision fp8,cmd:python3 -m honed bench"
  rc=$((rc ? rc : $?))
  on=$(results fp8)
  run fp8 "${capped[@]}" HONED_FP8_CHOICE=0 "${bench[@]}" --stacks "cmd:python3 -m honed bench --precision fp8"
  rc=$((rc ? rc : $?))
  off=$(results fp8)
  note fp8 "$(status $rc)" "matmuls fp8/bf16 ${ratio:-?}; choice on: $on; choice off: $off"
}

# longest: longest_seq.py's search. LCAP (a GiB cap such as 80, or full; default 80), LSTACKS (default
# unsloth,honed-offload,honed), LARGS (more flags, e.g. --probe-timeout 200). It continues the search
# in .bench/longest/longest_seq.json when there (put the file an earlier call brought back there).
part_longest() {
  local cap=${LCAP:-80} stacks=${LSTACKS:-unsloth,honed-offload,honed}
  local needs=(cuda py:honed.config .bench/peer_bench.py)
  [[ $stacks == *unsloth* ]] && needs+=(.peer/site/unsloth)
  need longest "${needs[@]}" || return
  mkdir -p "$OUT/longest"
  [[ -f .bench/longest/longest_seq.json ]] && cp .bench/longest/longest_seq.json "$OUT/longest/"
  # shellcheck disable=SC2086  # LARGS is a list of words
  run longest python3 benchmarks/longest_seq.py --cap "$cap" --stacks "$stacks" --out "$OUT/longest" \
    --budget-s $((LIMIT - SECONDS - 20)) ${LARGS:-}
  local rc=$?
  note longest "$(status $rc)" "cap $cap: $(python3 benchmarks/device/summarize.py longest "$OUT/longest/longest_seq.json" "$cap")"
}

# peers: one peer_bench.py row. SHAPE (llama-8b), SEQ (2048), BATCH (2), STEPS (8), WARMUP (2), QLORA=1
# for NF4, CAP (GiB; unset: the full card), STACKS (comma list, default hf,unsloth,honed-offload,honed;
# honed and honed-offload stand for `python3 -m honed bench` [--memory offload], cmd:... is passed as is).
part_peers() {
  local stacks=${STACKS:-hf,unsloth,honed-offload,honed} spec=() list s
  IFS=, read -ra list <<<"$stacks"
  for s in "${list[@]}"; do
    case $s in
      honed) spec+=("cmd:python3 -m honed bench") ;;
      honed-offload) spec+=("cmd:python3 -m honed bench --memory offload") ;;
      *) spec+=("$s") ;;
    esac
  done
  local needs=(cuda py:honed.config .bench/peer_bench.py)
  [[ ,$stacks, == *,unsloth,* ]] && needs+=(.peer/site/unsloth)
  [[ ,$stacks, == *,liger,* ]] && needs+=(.peer/site/liger_kernel)
  [[ ${QLORA:-0} == 1 ]] && needs+=(.peer/site/bitsandbytes)
  need peers "${needs[@]}" || return
  local cap=()
  [[ -n ${CAP:-} ]] && cap=(env BENCH_GPU_CAP_GIB="$CAP" PYTHONPATH="$ROOT/benchmarks/gpu_cap:$PYTHONPATH")
  run peers "${cap[@]}" python3 .bench/peer_bench.py --shape "${SHAPE:-llama-8b}" --seq "${SEQ:-2048}" \
    --batch "${BATCH:-2}" --steps "${STEPS:-8}" --warmup "${WARMUP:-2}" --timeout 300 \
    $([[ ${QLORA:-0} == 1 ]] && echo --qlora) --stacks "$(IFS=,; echo "${spec[*]}")"
  local rc=$?
  note peers "$(status $rc)" "${SHAPE:-llama-8b} ${SEQ:-2048}x${BATCH:-2}${CAP:+ cap ${CAP}GiB}$([[ ${QLORA:-0} == 1 ]] && echo " QLoRA"): $(results peers)"
}

# ---- main ----------------------------------------------------------------------------------------

# into the file first, then shown: in a pipeline setup's variables would stay in a subshell
setup >"$OUT/summary.log" 2>&1
cat "$OUT/summary.log"
for p in "${PARTS[@]}"; do
  if ((LIMIT - SECONDS < 60)); then
    note "$p" budget "not started: ${SECONDS}s of LIMIT=${LIMIT}s used"
    continue
  fi
  rm -f "$OUT/$p.log"  # (a folder reused outside the device machine)
  "part_$p"
done

{
  echo
  echo "== summary: ${GPU:-no GPU}, commit $COMMIT, ${SECONDS}s of ${LIMIT}s"
  printf '%-8s %-9s %s\n' part status detail
  printf '%s\n' "${SUMMARY[@]}"
  n=$(find "$OUT" -type f | wc -l)
  ((n <= 8)) || echo "note: $n files under \$OUT; a call brings back at most 8 (the summary is also in this output)"
} | tee -a "$OUT/summary.log"
exit "$FAILED"
