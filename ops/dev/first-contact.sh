#!/usr/bin/env bash
# CI step: the README's first command (ops/dev/demo.sh) against broker and storage state that no
# earlier run created, so it cannot pass only because a previous run left a durable queue behind.
#   1. starts the dev services if needed (ops/dev/services.sh up);
#   2. creates a fresh RabbitMQ vhost with a random name (rabbitmqctl add_vhost) and gives the
#      guest user every permission on it, and picks a fresh output prefix and a free HTTP port;
#   3. runs ops/dev/demo.sh on them (INPAINT_DEMO_VHOST, INPAINT_DEMO_PREFIX, INPAINT__HTTP__BIND);
#   4. deletes the vhost (also on failure). Exits with the demo's status.
# Needs rabbitmqctl (from the rabbitmq-server package services.sh installs) and the right to
# run it (root, or the rabbitmq user).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

ops/dev/services.sh up >/dev/null
vhost="first-contact-$(date -u +%Y%m%d%H%M%S)-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
prefix="first-contact/$vhost"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

rabbitmqctl add_vhost "$vhost" >/dev/null
cleanup() { rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true; }
trap cleanup EXIT
rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
echo "[first-contact] fresh vhost $vhost, output prefix $prefix, http 127.0.0.1:$port" >&2
# Nothing exists in a fresh vhost: the jobs queue must come from the worker or from submit.
if rabbitmqctl list_queues -p "$vhost" name 2>/dev/null | grep -q inpaint; then
  echo "[first-contact] the fresh vhost already has queues" >&2
  exit 1
fi

INPAINT_DEMO_VHOST="$vhost" INPAINT_DEMO_PREFIX="$prefix" INPAINT__HTTP__BIND="127.0.0.1:$port" \
  ops/dev/demo.sh
echo "[first-contact] ok: the demo passed on a fresh vhost and prefix" >&2
