#!/usr/bin/env bash
# The workspace built and tested against libtorch 2.11 (tch 0.24, PyTorch 2.11.0) instead of
# 2.13 (tch 0.26), for hosts whose PyTorch is 2.11: the same sources, no second copy of libtorch.
#
#   ops/dev/libtorch-2.11.sh [cargo args...]   default: test --locked -p inpaint-engine
#                                              --test pipeline_parity --test batch_parity --test job_batch
#   ops/dev/libtorch-2.11.sh --install-only     only install torch==2.11.0 (CI starts it early, in the
#                                              background, so the download overlaps the main build)
#
# LIBTORCH_2_11_TARGET_DIR=target (CI) builds in the main target folder, so that the crates both
# builds share (everything but tch, torch-sys and the workspace's own) are compiled once. Only for
# tests: a binary built there would be copied over the main build's own. Either way cargo runs with
# LD_LIBRARY_PATH at the 2.11 libraries (the main folder's rpath points at 2.13's), and before the
# tests run the script checks with ldd that every test binary resolves libtorch to 2.11.
#
# Why not a cargo feature: torch-sys declares `links = "tch"`, and Cargo allows one package per
# `links` value in a dependency graph — optional dependencies included, since the lockfile does
# not depend on features — so tch 0.24 and 0.26 cannot both be dependencies of one workspace.
# Instead this script mirrors the sources into target/libtorch-2.11/src,
# swaps the two version requirements in the mirror's manifests, derives the mirror's lockfile from
# the main Cargo.lock by swapping those two packages' versions and checksums (pinned below; every
# other crate is the main build's, so the build is --locked and cannot drift from the main lock),
# and runs cargo there with its own target folder. The binaries it builds (target/libtorch-2.11/target/<profile>/)
# carry an rpath to the 2.11 libtorch the same way the main build does.
#
# libtorch 2.11 comes from PyPI's torch==2.11.0 in .venv-2.11/ (about 4.7 GB, like 2.13), or from
# LIBTORCH_2_11=/path/to/libtorch-or-torch-package.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
log() { printf '[libtorch-2.11] %s\n' "$*" >&2; }
PYTHON=${PYTHON:-python3}
work=target/libtorch-2.11
mirror=$work/src

if [ -n "${LIBTORCH_2_11:-}" ]; then
  libtorch=$(cd "$LIBTORCH_2_11" && pwd -P)
else
  if [ ! -x .venv-2.11/bin/python ]; then
    log "creating .venv-2.11"
    "$PYTHON" -m venv .venv-2.11
  fi
  have=$(.venv-2.11/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  if [ "$have" != "2.11.0" ]; then
    log "installing torch==2.11.0 from PyPI into .venv-2.11 (about 4.7 GB)"
    .venv-2.11/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir "torch==2.11.0"
  fi
  libtorch=$(.venv-2.11/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
fi

if [ "${1:-}" = "--install-only" ]; then
  log "libtorch $libtorch"
  exit 0
fi

# The sources as git sees them (tracked and new, not ignored), modification times kept so that
# cargo rebuilds only what changed.
rm -rf "$mirror"
mkdir -p "$mirror"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c --no-recursion -f - |
  tar -x -C "$mirror" -f -
# The build finds libtorch through the mirror's link, the binaries through the one beside their
# target folder (the same $ORIGIN-relative rpath as the main build).
ln -sfn "$libtorch" "$mirror/.libtorch"
ln -sfn "$libtorch" "$work/.libtorch"
# tch 0.24 / torch-sys 0.24 in place of 0.26: the only difference between the two builds.
sed -i -E 's/^tch = "0\.26"/tch = "0.24"/' "$mirror/Cargo.toml"
sed -i -E 's/^torch-sys = "0\.26"/torch-sys = "0.24"/' "$mirror/worker/engine/Cargo.toml"
grep -q '^tch = "0.24"' "$mirror/Cargo.toml" || { log "the workspace's tch requirement moved: update this script"; exit 1; }
grep -q '^torch-sys = "0.24"' "$mirror/worker/engine/Cargo.toml" || { log "the engine's torch-sys requirement moved: update this script"; exit 1; }

# tch 0.24.0 and torch-sys 0.24.0 have the same dependencies as 0.26.0 (--locked fails if that
# stops being true): only the two packages' versions and checksums change.
"$PYTHON" - "$mirror/Cargo.lock" <<'PY'
import sys
pins = {
    "tch": ("0.24.0", "0d3f84a069d8ba16dbf720b61e8bf131d90ffb8e958a664eae8e4993c5c2fa6f"),
    "torch-sys": ("0.24.0", "f4ba78777379cf09aaa79708c63e477cf0f95e021d04360c6821f1a9f56173f7"),
}
path = sys.argv[1]
blocks = open(path).read().split("\n[[package]]\n")
swapped = set()
for i, block in enumerate(blocks):
    lines = block.split("\n")
    name = next((l.split('"')[1] for l in lines if l.startswith("name = ")), None)
    if name in pins:
        version, checksum = pins[name]
        lines = [f'version = "{version}"' if l.startswith("version = ") else
                 f'checksum = "{checksum}"' if l.startswith("checksum = ") else l for l in lines]
        blocks[i] = "\n".join(lines)
        swapped.add(name)
if swapped != set(pins):
    sys.exit(f"Cargo.lock has no {sorted(set(pins) - swapped)}: update ops/dev/libtorch-2.11.sh")
open(path, "w").write("\n[[package]]\n".join(blocks))
PY

target_dir=${LIBTORCH_2_11_TARGET_DIR:-$work/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
export LD_LIBRARY_PATH="$libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$mirror"
export CARGO_TARGET_DIR=$target_dir
if [ $# -gt 0 ]; then
  log "libtorch $libtorch; cargo $*"
  exec cargo "$@"
fi
tests=(--locked -p inpaint-engine --test pipeline_parity --test batch_parity --test job_batch)
log "libtorch $libtorch; cargo test ${tests[*]}"
start=$(date +%s)
# Build first, then prove each test binary loads 2.11's libtorch (not the main build's 2.13
# through an rpath), then run them.
executables=$(cargo test "${tests[@]}" --no-run --message-format=json |
  "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
log "built in $(( $(date +%s) - start )) s"
[ -n "$executables" ] || { log "cargo listed no test binaries"; exit 1; }
for exe in $executables; do
  resolved=$(ldd "$exe" | awk '$1 == "libtorch_cpu.so" { print $3 }')
  if [ "$(readlink -f "$resolved")" != "$(readlink -f "$libtorch/lib/libtorch_cpu.so")" ]; then
    log "$exe resolves libtorch_cpu.so to '${resolved}', not $libtorch/lib"
    exit 1
  fi
done
log "every test binary resolves libtorch_cpu.so in $libtorch/lib"
cargo test "${tests[@]}"
log "passed in $(( $(date +%s) - start )) s"
