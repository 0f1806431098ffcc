#!/usr/bin/env bash
# The README's first command: the main job, end to end, on the embedded default.
#   1. libtorch (torch==2.13.0 from PyPI into .venv), RabbitMQ and Garage, installed and started
#      as needed (ops/dev/libtorch.sh, ops/dev/services.sh);
#   2. builds inpaint-worker and starts `inpaint-worker run --config ops/worker.example.toml`:
#      the embedded tiny model, prompt policy + safety checker + watermark;
#   3. `inpaint-worker submit` uploads ops/samples/image.png and mask.png to Garage, publishes
#      ops/samples/job.json, waits for the result message and prints it;
#   4. stops the worker (SIGTERM, graceful) and the services it started.
# The tiny model has random weights: the inpainted region is noise-like. Point engine.model at a
# real stable-diffusion-inpainting folder (INPAINT__ENGINE__MODEL=/path) for real pictures.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

ops/dev/libtorch.sh
started=$(ops/dev/services.sh up)
worker=
cleanup() {
  if [ -n "$worker" ] && kill -0 "$worker" 2>/dev/null; then
    kill -TERM "$worker"
    wait "$worker" || true
  fi
  [ -z "$started" ] || ops/dev/services.sh down $started
}
trap cleanup EXIT
eval "$(ops/dev/services.sh env)"

cargo build --locked -p inpaint-worker
bin=target/debug/inpaint-worker
mkdir -p .dev/demo
# The example configuration, with one change: the tiny random-weight safety checker that matches
# the tiny model flags its noise-like outputs, so the demo loosens it. Real checkers keep 0.0.
config=.dev/demo/worker.toml
sed 's/^adjustment = 0.0$/adjustment = -0.5/' ops/worker.example.toml > "$config"
"$bin" run --config "$config" > .dev/demo/worker.log 2>&1 &
worker=$!
echo "[demo] worker pid $worker, log .dev/demo/worker.log" >&2

result=$("$bin" submit --config "$config" --job ops/samples/job.json \
  --image ops/samples/image.png --mask ops/samples/mask.png --wait 600)
echo "$result"
status=$(printf '%s' "$result" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"])')
echo "[demo] job status: $status (outputs under s3://inpaint-dev/, worker log .dev/demo/worker.log)" >&2
[ "$status" = succeeded ]
