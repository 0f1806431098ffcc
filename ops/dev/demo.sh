#!/usr/bin/env bash
# The README's first command. Today it sets everything up (libtorch, RabbitMQ, Garage) and runs
# `inpaint-worker smoke`: one job-shaped round trip through the broker (publisher confirms,
# manual ack), Garage (S3) and libtorch on this machine's device. The real inpainting job takes
# its place once the worker and the engine land (see README "Status").
# Services this script started are stopped again at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

ops/dev/libtorch.sh
started=$(ops/dev/services.sh up)
stop_started() { [ -z "$started" ] || ops/dev/services.sh down $started; }
trap stop_started EXIT
eval "$(ops/dev/services.sh env)"

cargo run --locked -p inpaint-worker -- smoke "$@"
