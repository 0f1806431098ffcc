#!/usr/bin/env bash
# Issue 11's deployment CI, for real, on this machine (Docker, no registry needed):
#   1. Docker (docker.io, docker-compose 1.29, debootstrap from Debian) and its daemon;
#   2. the release worker binary copied to a temporary folder outside the checkout: `inpaint`
#      on embedded-tiny there, and `run` without engine.model refused;
#   3. images: worker (ops/container/build.sh), RabbitMQ, Garage, producers (ops/compose/build-images.sh),
#      and checks of the worker image (no Python/compiler, non-root, labels, licence, size);
#   4. compose stack with 2 workers on the tiny model; the README's main job from the Python
#      producer; scale to 3; 30 jobs with one worker SIGKILLed mid-run: every job exactly one
#      terminal result with verified outputs, and some redelivered from the killed worker;
#   5. the Node and Go producers, and a job the prompt policy blocks;
#   6. the dashboard's metrics against live worker and RabbitMQ scrapes; Kubernetes overlays
#      rendered, validated offline and checked against the worker's configuration and a live worker;
#   7. a graceful SIGTERM drain of one worker; teardown (also on failure). Times per step printed.
# Idempotent: reuses built images and the cargo cache; removes the stack it brings up.
#
#   ops/ci/deploy.sh            everything above
#   ops/ci/deploy.sh prefetch   only step 1 and the images that need no worker binary (base image,
#                               the worker image's libtorch stage, RabbitMQ, Garage, producers):
#                               downloads and unpacking, little CPU. .ci/run starts this in the
#                               background while the test suite builds, so the full run later
#                               finds Docker's layer cache warm.
set -euo pipefail
mode=${1:-all}
case $mode in all|prefetch) ;; *) echo "usage: $0 [prefetch]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-inpaint-ci}
compose() { docker-compose -f ops/compose.yaml "$@"; }
work=$(mktemp -d /var/tmp/inpaint-deploy.XXXXXX)
started=$(date +%s); last=$started
times=()
log() { printf '[deploy] %s\n' "$*" >&2; }
step() { local now; now=$(date +%s); times+=("$(printf '%-44s %5d s' "$1" $((now - last)))"); log "done: $1 ($((now - last)) s)"; last=$now; }
fail() { log "FAILED: $*"; exit 1; }
teardown() {
  local rc=$?
  if [ "$rc" != 0 ] && docker info >/dev/null 2>&1; then
    compose ps >&2 || true
    compose logs --tail=40 >&2 2>/dev/null || true
  fi
  compose --profile producers down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  log "times:"; printf '[deploy]   %s\n' "${times[@]}" >&2
  log "total $(( $(date +%s) - started )) s, exit $rc"
}
trap teardown EXIT

# 1. Docker ---------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io docker-compose debootstrap from Debian"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >&2
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd > /var/log/inpaint-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (/var/log/inpaint-dockerd.log)"
fi
compose --profile producers down -v --remove-orphans >/dev/null 2>&1 || true   # a stack left by an earlier run
ops/dev/libtorch.sh >&2
ops/dev/services.sh install >&2           # the garage binary the Garage image is built from
.venv/bin/python -c 'import yaml, kubernetes_validate' 2>/dev/null || .venv/bin/pip install -q pyyaml kubernetes-validate >&2
step "docker, libtorch, garage, python tools"
if [ "$mode" = prefetch ]; then
  BUILD_ONLY_LIBTORCH=1 ops/container/build.sh
  ops/compose/build-images.sh
  step "prefetch: base image, libtorch stage, rabbitmq, garage and producer images"
  log "prefetch done"
  exit 0
fi

# 2. The release binary, copied outside the checkout -------------------------------------------------
# INPAINT_WORKER_BIN: a release binary built (with this rpath) beforehand; otherwise built here.
bin=${INPAINT_WORKER_BIN:-}
if [ -z "$bin" ]; then
  RUSTFLAGS='-C link-arg=-Wl,-rpath,$ORIGIN/../lib' cargo build --locked --release -p inpaint-worker >&2
  bin=${CARGO_TARGET_DIR:-$root/target}/release/inpaint-worker
fi
step "cargo build --release (rpath \$ORIGIN/../lib)"
copy=$work/copied
mkdir -p "$copy/bin"
cp "$bin" "$copy/bin/"
# The documented layout: bin/inpaint-worker and lib/ with libtorch (here the wheel's torch/lib).
ln -s "$(readlink -f .libtorch)/lib" "$copy/lib"
(
  cd "$copy"
  env -u LD_LIBRARY_PATH INPAINT_CACHE_DIR="$copy/cache" bin/inpaint-worker inpaint --model embedded-tiny \
    --image "$root/ops/samples/image.png" --mask "$root/ops/samples/mask.png" --prompt "a blue balloon" \
    --scheduler dpmpp-2m --steps 1 --output out.png --raw > inpaint.log 2>&1 || { cat inpaint.log >&2; exit 1; }
  [ -s out.png ] || fail "the copied binary wrote no output"
  grep -q "random-weight test model" inpaint.log || fail "no embedded-tiny warning from the copied binary"
  ls cache | grep -q '^inpaint-worker-embedded-tiny-' || fail "embedded-tiny not written to INPAINT_CACHE_DIR"
  printf '[allow]\nread_buckets = ["inpaint-dev"]\nwrite_buckets = ["inpaint-dev"]\n' > no-model.toml
  if timeout 60 bin/inpaint-worker run --config no-model.toml > no-model.log 2>&1; then fail "run without engine.model started"; fi
  grep -q "engine.model" no-model.log || { cat no-model.log >&2; fail "run without engine.model: no error naming the key"; }
)
log "copied binary: inpaint on embedded-tiny ok in $copy, run without engine.model refused"
step "copied release binary outside the checkout"

# 3. Images ----------------------------------------------------------------------------------------
INPAINT_WORKER_BIN="$bin" ops/container/build.sh
ops/compose/build-images.sh
step "images (worker, rabbitmq, garage, producers)"
image=inpaint-worker:latest
size=$(docker image inspect -f '{{.Size}}' "$image")
log "worker image $(awk -v s="$size" 'BEGIN{printf "%.2f GB", s/1e9}'); largest files in /opt/inpaint/lib:"
docker run --rm --entrypoint bash "$image" -c 'du -sh /opt/inpaint/lib /opt/inpaint/bin; ls -S -s --block-size=M /opt/inpaint/lib | head -8' >&2
found=$(docker run --rm --entrypoint bash "$image" -c 'for c in python3 python pip pip3 cc gcc rustc cargo; do command -v $c; done; ls /root/.cache 2>/dev/null' || true)
[ -z "$found" ] || fail "the runtime image holds build tools: $found"
[ "$(docker image inspect -f '{{.Config.User}}' "$image")" = 10001:10001 ] || fail "image does not run as the non-root user"
docker image inspect -f '{{json .Config.Labels}}' "$image" | grep -q 'OPENRAIL' || fail "weights licence label missing"
docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image" | grep -q . || fail "version label missing"
docker run --rm --entrypoint bash "$image" -c 'grep -q "CreativeML Open RAIL-M" /usr/share/licenses/inpaint-worker/LICENSE-OPENRAIL-M' || fail "LICENSE-OPENRAIL-M not in the image"
docker image inspect -f '{{json .Config.Healthcheck}}' "$image" | grep -q healthz || fail "no HEALTHCHECK on /healthz"
if docker run --rm "$image" run > "$work/no-model.log" 2>&1; then fail "the image started without engine.model"; fi
grep -q "engine.model" "$work/no-model.log" || fail "the image's refusal does not name engine.model"
step "image checks"

# 4. Compose stack ---------------------------------------------------------------------------------
wait_healthy() { # count seconds
  local n
  for _ in $(seq "$2"); do
    n=$(docker ps --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
      --filter label=com.docker.compose.service=worker --filter health=healthy -q | wc -l)
    [ "$n" -ge "$1" ] && return 0
    sleep 1
  done
  fail "fewer than $1 healthy workers after $2 s"
}
compose up -d --no-build --scale worker=2 >&2
wait_healthy 2 180
step "compose up: rabbitmq, garage, 2 workers healthy"
# Logs to a file first: `docker logs | grep -q` under pipefail fails whenever grep stops reading
# before docker logs has written everything (SIGPIPE), i.e. more often the longer the log.
docker logs "$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=worker | head -n1)" \
  > "$work/worker-start.log" 2>&1
grep -q "random-weight test model" "$work/worker-start.log" || { tail -n 20 "$work/worker-start.log" >&2; fail "a worker on embedded-tiny did not warn"; }
# STEPS: denoising steps per job (the tiny model; 1 keeps CI short on a loaded 2-core machine).
run_producer() { compose --profile producers run --rm -T -e "STEPS=${STEPS:-1}" -v "$work:/out" "$@"; }
run_producer producer-python --prompt "a blue hot-air balloon over a hill" --out-dir /out >&2
ls "$work"/*-0.png >/dev/null || fail "the main job's output was not downloaded"
step "main job (Python producer)"

compose up -d --no-build --no-recreate --scale worker=3 >&2
wait_healthy 3 180
step "scaled to 3 workers"
run_producer producer-python --count 30 --settle 10 --summary /out/summary.json > "$work/batch.log" 2>&1 &
batch=$!
for _ in $(seq 1500); do   # up to 5 minutes for the first 3 results
  [ "$(grep -c '^result ' "$work/batch.log" || true)" -ge 3 ] && break
  kill -0 "$batch" 2>/dev/null || break
  sleep 0.2
done
victim=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=worker | head -n1)
log "$(grep -c '^result ' "$work/batch.log" || true)/30 results in: docker kill (SIGKILL) worker $victim"
docker kill "$victim" >/dev/null
wait "$batch" || { cat "$work/batch.log" >&2; fail "the batch did not end with exactly one good result per job"; }
redelivered=$(grep -c '^result .* attempt [2-9]' "$work/batch.log" || true)
tail -n 3 "$work/batch.log" >&2
[ "$(grep -c '^result ' "$work/batch.log")" = 30 ] || fail "not 30 results"
[ "$redelivered" -ge 1 ] || fail "no job was redelivered: the kill did not hit a worker mid-job"
log "kill test: 30 jobs, 30 terminal results, none duplicated, outputs verified; $redelivered redelivered from the killed worker"
step "30 jobs on 3 workers, one SIGKILLed"

# 5. The other producers, and the failure path -----------------------------------------------------------
run_producer producer-node >&2
step "Node producer"
run_producer producer-go >&2
step "Go producer"
run_producer producer-python --prompt "nudify this photo" --expect blocked >&2
step "blocked job (prompt policy)"

# 6. Dashboard and Kubernetes ----------------------------------------------------------------------
ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
workers=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=worker)
worker=$(echo "$workers" | head -n1)
rabbit=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=rabbitmq)
scrapes=()
for w in $workers; do scrapes+=(--worker "http://$(ip "$w"):9090/metrics"); done
.venv/bin/python ops/ci/check_dashboard.py --self-test "${scrapes[@]}" --rabbitmq "http://$(ip "$rabbit"):15692/metrics"
step "dashboard metrics vs live scrapes"
PATH="$root/.venv/bin:$PATH" python ops/ci/check_k8s.py --live "http://$(ip "$worker"):9090"
PATH="$root/.venv/bin:$PATH" python ops/ci/check_k8s.py --self-test
step "kubernetes: render, validate, agree with worker.toml"

# 7. Graceful stop ---------------------------------------------------------------------------------
docker stop -t 40 "$worker" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$worker")" = 0 ] || fail "SIGTERM: the worker did not exit 0"
step "SIGTERM: a worker stops cleanly"
compose --profile producers down -v --remove-orphans >&2
step "teardown"
log "all deployment checks passed"
