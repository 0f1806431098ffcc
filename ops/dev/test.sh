#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. libtorch (torch==2.13.0 from PyPI into .venv) via ops/dev/libtorch.sh;
#   2. RabbitMQ and Garage via ops/dev/services.sh (installed and started when missing);
#   3. cargo test over the whole workspace, end-to-end tests included (the worker binary is
#      built first: tests/resilience.rs runs it as a process);
#   4. the services this script started are stopped again, whatever the outcome.
# Extra arguments go to cargo test (e.g. ops/dev/test.sh -p inpaint-storage).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

ops/dev/libtorch.sh
started=$(ops/dev/services.sh up)
stop_started() { [ -z "$started" ] || ops/dev/services.sh down $started; }
trap stop_started EXIT

# The resilience tests run the worker binary as a real process (and SIGKILL it).
cargo build --locked -p inpaint-worker --bin inpaint-worker
cargo test --workspace --locked "$@"
