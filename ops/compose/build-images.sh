#!/usr/bin/env bash
# Builds the compose stack's images besides the worker's (ops/container/build.sh) on a machine
# without a container registry: RabbitMQ from Debian's package, Garage from its binary
# (GARAGE_BIN, default ~/.cargo/bin/garage: `cargo install garage --locked --version 2.5.0`), and
# the three producers. Tags are those ops/compose.yaml names. Idempotent (Docker's layer cache).
#
#   ops/compose/build-images.sh [rabbitmq] [garage] [producers]     default: all
#   EXTRA_CA_CERTS="a.crt ..."   CAs of a TLS-intercepting proxy for the producers' npm/pip steps
#                                (default: /usr/local/share/ca-certificates/*.crt, if any)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
log() { printf '[images] %s\n' "$*" >&2; }
ops/container/base-image.sh

# build NAME TAG SOURCE_DIR: docker build from a copy of SOURCE_DIR plus build-ca/.
build() {
  local ctx; ctx=$(mktemp -d /var/tmp/inpaint-ctx.XXXXXX)
  cp -r "$3"/. "$ctx"/
  mkdir -p "$ctx/build-ca"
  local ca
  for ca in ${EXTRA_CA_CERTS-/usr/local/share/ca-certificates/*.crt}; do
    [ -f "$ca" ] && cp "$ca" "$ctx/build-ca/"
  done
  [ "$1" != garage ] || cp "${GARAGE_BIN:-$HOME/.cargo/bin/garage}" "$ctx/garage"
  log "building $2"
  local rc=0
  docker build -q -t "$2" "$ctx" >/dev/null || rc=$?
  rm -rf "$ctx"
  return $rc
}

for what in "${@:-rabbitmq garage producers}"; do
  for name in $what; do
    case $name in
      rabbitmq) build rabbitmq inpaint/rabbitmq:bookworm ops/compose/rabbitmq ;;
      garage)
        [ -x "${GARAGE_BIN:-$HOME/.cargo/bin/garage}" ] || { log "no garage binary: ops/dev/services.sh install"; exit 1; }
        build garage inpaint/garage:2.5.0 ops/compose/garage ;;
      producers)
        for lang in python node go; do
          build "producer-$lang" "inpaint/producer-$lang" "examples/producers/$lang"
        done ;;
      *) log "unknown image $name"; exit 1 ;;
    esac
  done
done
