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
#
# Environment (all optional; ops/dev/first-contact.sh uses them to run on state no earlier run
# created):
#   INPAINT_DEMO_VHOST=name     use this RabbitMQ vhost (on the dev broker, user guest)
#   INPAINT__BROKER__URL=amqp://...  or any broker URL (the worker's own override; wins)
#   INPAINT_DEMO_PREFIX=p       write the outputs under s3://inpaint-dev/p/ (default: bucket root)
#   INPAINT__HTTP__BIND=127.0.0.1:9090  where the worker serves /readyz (the demo waits on it)
#   INPAINT_DEMO_READY_SECS=600 how long to wait for /readyz
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

if [ -n "${INPAINT_DEMO_VHOST:-}" ] && [ -z "${INPAINT__BROKER__URL:-}" ]; then
  export INPAINT__BROKER__URL="amqp://guest:guest@127.0.0.1:5672/$INPAINT_DEMO_VHOST"
fi
bind=${INPAINT__HTTP__BIND:-127.0.0.1:9090}
export INPAINT__HTTP__BIND="$bind"

cargo build --locked -p inpaint-worker
bin=${CARGO_TARGET_DIR:-target}/debug/inpaint-worker
mkdir -p .dev/demo
# The example configuration, with one change: the tiny random-weight safety checker that matches
# the tiny model flags its noise-like outputs, so the demo loosens it. Real checkers keep 0.0.
config=.dev/demo/worker.toml
sed 's/^adjustment = 0.0$/adjustment = -0.5/' ops/worker.example.toml > "$config"
"$bin" run --config "$config" > .dev/demo/worker.log 2>&1 &
worker=$!
echo "[demo] worker pid $worker, log .dev/demo/worker.log" >&2

# Submit only once the worker is ready (broker connected, topology declared, model loaded): the
# README's first command must not depend on what an earlier run left on the broker.
ready_secs=${INPAINT_DEMO_READY_SECS:-600}
for ((i = 0; ; i++)); do
  if curl -fsS "http://$bind/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$worker" 2>/dev/null; then
    echo "[demo] the worker exited before it was ready; last lines of .dev/demo/worker.log:" >&2
    tail -n 20 .dev/demo/worker.log >&2
    exit 1
  fi
  if ((i >= ready_secs * 2)); then
    echo "[demo] the worker was not ready (http://$bind/readyz) within $ready_secs s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "[demo] worker ready after about $((i / 2)) s" >&2

job=ops/samples/job.json
if [ -n "${INPAINT_DEMO_PREFIX:-}" ]; then
  job=.dev/demo/job.json
  .venv/bin/python - "$INPAINT_DEMO_PREFIX" > "$job" <<'PY'
import json, sys
job = json.load(open("ops/samples/job.json"))
job["output"] = {"bucket": "inpaint-dev", "prefix": sys.argv[1]}
print(json.dumps(job))
PY
fi
result=$("$bin" submit --config "$config" --job "$job" \
  --image ops/samples/image.png --mask ops/samples/mask.png --wait 600)
echo "$result"
status=$(printf '%s' "$result" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"])')
echo "[demo] job status: $status (outputs under s3://inpaint-dev/${INPAINT_DEMO_PREFIX:-}, worker log .dev/demo/worker.log)" >&2
[ "$status" = succeeded ]
