#!/usr/bin/env bash
# Run once per session on this (CPU, networked) machine, from anywhere in the checkout, and again
# before each device call that should record the current commit (a second run takes seconds).
# It fills the git-ignored folders that a device call carries, because a session keeps none of them:
#   .whl/    wheels of what honed imports on its train/bench path that the GPU image lacks
#   .peer/   .peer/site: the peer stacks (Unsloth, Liger, bitsandbytes, TRL, datasets)   NO_PEERS=1 skips it
#   .bench/  peer_bench.py, and COMMIT (the tree that travels may have no .git to ask)
# Nothing already there is downloaded again. Then see benchmarks/device/README.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
shared=$(cd "${SHARED_BENCH:-../shared/bench}" && pwd)  # the peer harness lives beside the checkout, and ../ never travels

# The GPU image has torch, transformers, peft, accelerate, pyyaml, rich, numpy, safetensors, matplotlib
# (KINDS.md's package list) but not pydantic, which honed.config imports at module level. One version
# each, pinned: two versions of one package stop the install on the device. EXTRA_WHEELS="name==ver ..."
# adds more for one session.
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
typing-extensions==4.16.0 ${EXTRA_WHEELS:-}"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64"

wheel_prefix() {  # "typing-extensions==4.16.0" -> "typing_extensions-4.16.0-" (how wheel files are named)
  local name=${1%%==*} version=${1##*==}
  name=$(echo "$name" | tr 'A-Z.-' 'a-z__')
  echo "$name-$version-"
}

fetch_wheels() {
  mkdir -p .whl
  local want="" spec
  for spec in $WHEELS; do
    want+=" $(wheel_prefix "$spec")"
    if ! compgen -G ".whl/$(wheel_prefix "$spec")*.whl" >/dev/null; then
      echo "wheel: downloading $spec"
      # (the grep drops pip's notes about configured local indexes that do not exist)
      # shellcheck disable=SC2086
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d .whl "$spec" 2>&1 | { grep -v "is ignored: it is neither" || true; }
      compgen -G ".whl/$(wheel_prefix "$spec")*.whl" >/dev/null || { echo "wheel: no wheel for $spec"; exit 1; }
    fi
  done
  # drop wheels no longer pinned (an older version left from an earlier pin would break the install)
  local f keep p lower
  for f in .whl/*.whl; do
    keep=0
    lower=$(basename "$f" | tr 'A-Z' 'a-z')
    for p in $want; do
      [[ $lower == "$p"* ]] && keep=1
    done
    [[ $keep == 1 ]] || { echo "wheel: removing $(basename "$f") (not pinned)"; rm -f "$f"; }
  done
  check_wheels
}

check_wheels() {
  # every wheel must install on x86-64 Python 3.12, one version a package, and its needs must be
  # among the wheels or on the image (checked against KINDS.md's list where this workplace has it)
  python3 - "${KINDS_MD:-../.library/device/KINDS.md}" <<'PY'
import re, sys, zipfile, glob, collections, pathlib
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wheels = sorted(glob.glob(".whl/*.whl"))
names, bad = collections.defaultdict(list), []
for w in wheels:
    name, version, *_, py, abi, plat = pathlib.Path(w).stem.split("-")
    names[norm(name)].append(version)
    ok_py = py in ("py3", "cp312") or py.startswith("py3")
    ok_plat = plat == "any" or all(("manylinux" in p and p.endswith("x86_64")) for p in plat.split("."))
    if not (ok_py and ok_plat):
        bad.append(f"{w}: {py}-{abi}-{plat} does not install on x86-64 CPython 3.12")
bad += [f"{n}: several wheels (versions {v})" for n, v in names.items() if len(v) > 1]
kinds = pathlib.Path(sys.argv[1])
image = set()
if kinds.exists():
    line = next((l for l in kinds.read_text().splitlines() if "Packages: " in l), "")
    image = {norm(p.strip(" .")) for p in line.partition("Packages: ")[2].split(",")} - {""}
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for req in re.findall(r"^Requires-Dist: (.*)$", z.read(meta).decode(), re.M):
            if "extra ==" in req:
                continue
            need = norm(re.match(r"[A-Za-z0-9_.-]+", req).group())
            if need not in names and image and need not in image:
                bad.append(f"{w}: needs {req.strip()}, neither a wheel here nor on the image")
print(f"wheel: {len(wheels)} checked ({', '.join(f'{n} {v[0]}' for n, v in sorted(names.items()))})"
      + ("" if image else "; image list not found, needs not checked"))
if bad:
    sys.exit("wheel: " + "\nwheel: ".join(bad))
PY
}

build_peers() {
  if [[ ${NO_PEERS:-0} == 1 ]]; then echo "peer: skipped (NO_PEERS=1): only honed's own runs will work"; return; fi
  local stamp; stamp=$(sha256sum "$shared/build_peer_site.sh" | cut -c1-16)
  if [[ -d .peer/site && $(cat .peer/BUILT_FROM 2>/dev/null) == "$stamp" ]]; then
    echo "peer: .peer/site is current"; return
  fi
  # The shared script writes .git/info/exclude, which is no folder in a linked worktree: build in a
  # scratch repository and move the result here.
  local tmp; tmp=$(mktemp -d)
  git -C "$tmp" init -q
  (cd "$tmp" && bash "$shared/build_peer_site.sh") 2>&1 | { grep -v "is ignored: it is neither" || true; }
  rm -rf .peer/site && mkdir -p .peer && mv "$tmp/.peer/site" .peer/site
  echo "$stamp" > .peer/BUILT_FROM
  rm -rf "$tmp"
}

fill_bench() {
  mkdir -p .bench
  cmp -s "$shared/peer_bench.py" .bench/peer_bench.py || cp "$shared/peer_bench.py" .bench/peer_bench.py
  # card_matrix.py marks a tree that differs from HEAD the same way
  local commit; commit=$(git rev-parse --short HEAD)
  [[ -z $(git status --porcelain --untracked-files=no) ]] || commit+="+changes"
  echo "$commit" > .bench/COMMIT
  echo "bench: .bench/peer_bench.py, COMMIT $commit"
}

check_ignored_and_sizes() {
  local d exclude; exclude=$(git rev-parse --git-path info/exclude)
  for d in .whl .peer .bench; do
    if ! git check-ignore -q "$d/"; then
      mkdir -p "$(dirname "$exclude")"; echo "/$d/" >> "$exclude"; echo "ignore: added /$d/ to $exclude"
    fi
  done
  # what travels: the tree (tracked, and untracked files git does not ignore) plus the carried folders
  local bytes total
  mib() { awk -v b="$1" 'BEGIN { printf "%7.1f MiB", b / 1048576 }'; }
  total=$({ git ls-files -z -c -o --exclude-standard | du -cb --files0-from=- 2>/dev/null || true; } | tail -1 | cut -f1)
  printf 'size: %-6s %s\n' tree "$(mib "$total")"
  for d in .whl .peer .bench; do
    bytes=0; [[ -e $d ]] && bytes=$(du -sb "$d" | cut -f1)
    printf 'size: %-6s %s\n' "$d" "$(mib "${bytes:-0}")"
    total=$((total + ${bytes:-0}))
  done
  printf 'size: %-6s %s of the 64 MiB a device call may send\n' total "$(mib "$total")"
  (( total < 64 * 1048576 )) || { echo "size: over 64 MiB: carry less (NO_PEERS=1, fewer wheels)"; exit 1; }
}

fetch_wheels
build_peers
fill_bench
check_ignored_and_sizes
