#!/usr/bin/env bash
# Installs libtorch for tch 0.26 (PyTorch 2.13.0 exactly, from PyPI) into the project-local,
# git-ignored virtual environment .venv/, and points the git-ignored link .libtorch at it.
# .cargo/config.toml sets LIBTORCH=.libtorch and an $ORIGIN-relative rpath, so cargo build/test/run
# and the binaries they produce find libtorch without LIBTORCH or LD_LIBRARY_PATH exported by hand.
#
# To use another libtorch 2.13 (a system install with CUDA, say), export LIBTORCH=/path/to/libtorch
# before running this script: .libtorch then points there and no PyPI download happens.
# Idempotent: a second run with everything in place only checks it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}

log() { printf '[libtorch] %s\n' "$*" >&2; }

link_to() {
  local target=$1
  if [ "$(readlink .libtorch 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" .libtorch
    log ".libtorch -> $target"
  fi
}

if [ -n "${LIBTORCH:-}" ] && [ "$(cd "$LIBTORCH" 2>/dev/null && pwd -P)" != "$(cd .libtorch 2>/dev/null && pwd -P)" ]; then
  [ -f "$LIBTORCH/include/torch/csrc/api/include/torch/torch.h" ] && [ -d "$LIBTORCH/lib" ] || {
    log "LIBTORCH=$LIBTORCH does not look like a libtorch folder (include/torch/..., lib/)"; exit 1; }
  link_to "$LIBTORCH"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  log "installing torch==$TORCH_VERSION from PyPI into .venv (about 4.7 GB with its CUDA dependencies)"
  .venv/bin/python -m pip install --quiet --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
fi
torch_dir=$(.venv/bin/python -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parent)')
link_to "$torch_dir"
log "ok: torch $TORCH_VERSION at $torch_dir"
