#!/usr/bin/env bash
# Builds the worker image from ops/container/Dockerfile:
#   1. the base image (ops/container/base-image.sh: local, pulled, or debootstrapped when no
#      registry is reachable);
#   2. the release binary on the host, with rpath $ORIGIN/../lib so that it finds libtorch in the
#      image's /opt/inpaint/lib without LD_LIBRARY_PATH (INPAINT_WORKER_BIN=path skips the build);
#   3. a small build context (the binary, the container config, the tiny safety checker, the
#      licences, and wheels/ from WHEELS_DIR for air-gapped builds) and `docker build`.
#
#   ops/container/build.sh [TAG]          default tag inpaint-worker:<workspace version>, plus :latest
#   WHEELS_DIR=/path/to/wheels ...        torch==2.13.0 + nvidia-* wheels: pip installs only those
#   BUILD_ONLY_LIBTORCH=1 ...             just the libtorch stage (warms the layer cache)
#   EXTRA_CA_CERTS="a.crt b.crt" ...      CAs trusted while downloading (builder stage only);
#                                         default: /usr/local/share/ca-certificates/*.crt
#
# Why the binary is built on the host: the workspace needs a newer rustc than Debian bookworm
# ships, and the host's cargo cache makes rebuilds incremental. The binary needs glibc >= the
# build machine's: build on bookworm (or older) for this bookworm image.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-inpaint-worker:$version}
log() { printf '[image] %s\n' "$*" >&2; }

ops/container/base-image.sh

ctx=$(mktemp -d /var/tmp/inpaint-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels" "$ctx/build-ca" "$ctx/ops/container" "$ctx/tests/parity/safety/fixtures"
# EXTRA_CA_CERTS: space-separated PEM files (a TLS-intercepting proxy's CA) trusted while
# downloading from PyPI in the builder stage; default: the host's own additions, if any.
for ca in ${EXTRA_CA_CERTS-/usr/local/share/ca-certificates/*.crt}; do
  [ -f "$ca" ] && cp "$ca" "$ctx/build-ca/"
done
cp ops/container/collect-libs.sh ops/container/worker.toml "$ctx/ops/container/"
if [ -n "${WHEELS_DIR:-}" ]; then cp "$WHEELS_DIR"/*.whl "$ctx/wheels/"; fi
if [ -n "${BUILD_ONLY_LIBTORCH:-}" ]; then
  log "libtorch stage only"
  docker build -f ops/container/Dockerfile --target libtorch -t inpaint-worker-libtorch:cache "$ctx"
  exit 0
fi

bin=${INPAINT_WORKER_BIN:-}
if [ -z "$bin" ]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  log "cargo build --release -p inpaint-worker (rpath \$ORIGIN/../lib)"
  # RUSTFLAGS replaces .cargo/config.toml's development rpaths (relative to the checkout).
  RUSTFLAGS='-C link-arg=-Wl,-rpath,$ORIGIN/../lib' \
    cargo build --locked --release -p inpaint-worker >&2
  bin=$target/release/inpaint-worker
fi
if ! readelf -d "$bin" | grep -qF '$ORIGIN/../lib'; then
  log "$bin lacks the rpath \$ORIGIN/../lib (build it with the RUSTFLAGS above)"; exit 1
fi
cp "$bin" "$ctx/inpaint-worker"
strip --strip-debug "$ctx/inpaint-worker" 2>/dev/null || true
cp ops/worker.example.toml "$ctx/ops/"
cp -r tests/parity/safety/fixtures/checker-a "$ctx/tests/parity/safety/fixtures/"
cp LICENSE LICENSE-OPENRAIL-M "$ctx/"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log "docker build $tag"
docker build -f ops/container/Dockerfile --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" -t "$tag" -t "${tag%%:*}:latest" "$ctx" >&2
log "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')"
