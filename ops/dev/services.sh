#!/usr/bin/env bash
# Development services for the tests and the demo, on loopback only:
#   RabbitMQ 127.0.0.1:5672 (guest/guest), from Debian's packages;
#   Garage 2.5 (S3) 127.0.0.1:3900, region "garage", bucket "inpaint-dev", from crates.io.
#
#   ops/dev/services.sh up       install what is missing, start what is stopped; prints the names
#                                of the services this call started (one a line) on stdout
#   ops/dev/services.sh down [NAME...]  stop the named services (default: both), if this project
#                                started them
#   ops/dev/services.sh status
#   ops/dev/services.sh env      print the dev S3 credentials as shell exports
#   ops/dev/services.sh install  install both without starting them
#
# Idempotent. Data lives in the git-ignored .dev/ folder. Garage's binary is installed once into
# ~/.cargo/bin (cargo install takes about 9 minutes on 2 cores) and reused by every clone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dev="$root/.dev"
GARAGE_VERSION=2.5.0
export GARAGE_DEFAULT_ACCESS_KEY=GK1a2b3c4d5e6f708192a3b4c5
export GARAGE_DEFAULT_SECRET_KEY=5ecf2a9e0b7d4c3f8a6e1d2c9b0a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a
export GARAGE_DEFAULT_BUCKET=inpaint-dev

log() { printf '[services] %s\n' "$*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 4; i++)); do listening "$1" && return 0; sleep 0.25; done
  log "$3 did not open port $1 within $2 s"; return 1
}

rabbitmq_up() {
  if listening 5672; then log "rabbitmq: already listening on 5672"; return 0; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "rabbitmq: installing rabbitmq-server from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq rabbitmq-server >&2
  fi
  listening 5672 && { log "rabbitmq: started by its package"; return 0; }
  log "rabbitmq: starting"
  mkdir -p "$dev"
  # Loopback only; the node name is fixed so that rabbitmqctl finds it.
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached >&2
  wait_port 5672 60 rabbitmq
  # The port opens before the broker finishes booting: wait for the application itself.
  rabbitmqctl -q await_startup >&2 || true
  touch "$dev/rabbitmq.started-here"
  echo rabbitmq
}

garage_bin() {
  local bin
  for bin in "$(command -v garage || true)" "$HOME/.cargo/bin/garage"; do
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qE "[v:]$GARAGE_VERSION( |$)"; then
      echo "$bin"; return 0
    fi
  done
  return 1
}

garage_install() {
  garage_bin >/dev/null && return 0
  log "garage: cargo install garage --locked --version $GARAGE_VERSION (about 9 minutes on 2 cores)"
  cargo install garage --locked --version "$GARAGE_VERSION" >&2
}

garage_up() {
  if listening 3900; then log "garage: already listening on 3900"; return 0; fi
  garage_install
  local bin; bin=$(garage_bin)
  mkdir -p "$dev/garage"
  cat > "$dev/garage/garage.toml" <<TOML
metadata_dir = "$dev/garage/meta"
data_dir = "$dev/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(printf '%064d' 0 | tr 0 7)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
TOML
  log "garage: starting $bin"
  nohup "$bin" -c "$dev/garage/garage.toml" server --single-node --default-bucket \
    > "$dev/garage/garage.log" 2>&1 &
  echo $! > "$dev/garage/pid"
  wait_port 3900 60 garage || { tail -20 "$dev/garage/garage.log" >&2; return 1; }
  # Garage creates the default key and bucket before it opens the S3 port: it is ready now.
  echo garage
}

rabbitmq_down() {
  [ -f "$dev/rabbitmq.started-here" ] || { log "rabbitmq: not started by this project, left running"; return 0; }
  log "rabbitmq: stopping"
  rabbitmqctl -q stop >&2 || true
  rm -f "$dev/rabbitmq.started-here"
}

garage_down() {
  local pid
  pid=$(cat "$dev/garage/pid" 2>/dev/null || true)
  [ -n "$pid" ] || { log "garage: not started by this project, left running"; return 0; }
  log "garage: stopping pid $pid"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$dev/garage/pid"
}

case "${1:-}" in
  up) rabbitmq_up; garage_up ;;
  down)
    shift
    for name in "${@:-rabbitmq garage}"; do
      for n in $name; do "${n}_down"; done
    done ;;
  status)
    for pair in rabbitmq:5672 garage:3900; do
      if listening "${pair#*:}"; then echo "${pair%%:*}: up on ${pair#*:}"; else echo "${pair%%:*}: down"; fi
    done ;;
  env) # the dev credentials, for eval "$(ops/dev/services.sh env)"
    printf 'export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s AWS_REGION=garage\n' \
      "$GARAGE_DEFAULT_ACCESS_KEY" "$GARAGE_DEFAULT_SECRET_KEY" ;;
  install) garage_install; command -v rabbitmq-server >/dev/null || { apt-get update -qq && apt-get install -y -qq rabbitmq-server; } ;;
  *) echo "usage: $0 up|down [rabbitmq|garage...]|status|env|install" >&2; exit 2 ;;
esac
