#!/usr/bin/env bash
# The workspace built and tested against libtorch 2.11 (tch 0.24, PyTorch 2.11.0) instead of
# 2.13 (tch 0.26), for hosts whose PyTorch is 2.11: the same sources, no second copy of libtorch.
#
#   ops/dev/libtorch-2.11.sh [cargo args...]   default: test --locked -p inpaint-engine
#                                              --test pipeline_parity --test batch_parity --test job_batch
#
# Why not a cargo feature: torch-sys declares `links = "tch"`, and Cargo allows one package per
# `links` value in a dependency graph — optional dependencies included, since the lockfile does
# not depend on features — so tch 0.24 and 0.26 cannot both be dependencies of one workspace.
# Instead this script mirrors the sources into target/libtorch-2.11/src,
# swaps the two version requirements in the mirror's manifests, uses the committed lockfile
# ops/libtorch-2.11/Cargo.lock (so the build is --locked and reproducible), and runs cargo there
# with its own target folder. The binaries it builds (target/libtorch-2.11/target/<profile>/)
# carry an rpath to the 2.11 libtorch the same way the main build does.
#
# libtorch 2.11 comes from PyPI's torch==2.11.0 in .venv-2.11/ (about 4.7 GB, like 2.13), or from
# LIBTORCH_2_11=/path/to/libtorch-or-torch-package.
# To refresh the committed lockfile after a dependency change: LOCK_UPDATE=1 ops/dev/libtorch-2.11.sh
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
    .venv-2.11/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.11.0"
  fi
  libtorch=$(.venv-2.11/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
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

if [ -n "${LOCK_UPDATE:-}" ] || [ ! -f ops/libtorch-2.11/Cargo.lock ]; then
  cp Cargo.lock "$mirror/Cargo.lock"
  (cd "$mirror" && cargo update -p tch -p torch-sys >&2)
  mkdir -p ops/libtorch-2.11
  cp "$mirror/Cargo.lock" ops/libtorch-2.11/Cargo.lock
  log "wrote ops/libtorch-2.11/Cargo.lock"
else
  cp ops/libtorch-2.11/Cargo.lock "$mirror/Cargo.lock"
fi

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(test --locked -p inpaint-engine --test pipeline_parity --test batch_parity --test job_batch)
log "libtorch $libtorch; cargo ${args[*]}"
cd "$mirror"
CARGO_TARGET_DIR="$root/$work/target" cargo "${args[@]}"
