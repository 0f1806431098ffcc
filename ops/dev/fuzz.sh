#!/usr/bin/env bash
# Fuzzes everything that reads untrusted bytes, for a bounded time: the cargo-fuzz targets in
# fuzz/ (job_parser, image_decode, external_protocol, policy_normalize), FUZZ_SECS seconds each
# (default 20), after one build of all of them. CI runs it as is.
#   ops/dev/fuzz.sh [TARGET...]
# cargo-fuzz needs nightly features: with the stable toolchain RUSTC_BOOTSTRAP=1 unlocks them
# (rustup cannot download toolchains on the build machines). cargo-fuzz is installed on first use
# (`cargo install --locked cargo-fuzz`, pinned). fuzz/Cargo.lock is committed and must be up to
# date (checked with --locked before the build). No target links libtorch.
# Each target starts from its seeds (fuzz/seeds/<target>/, the schema examples for job_parser)
# plus its local corpus (fuzz/corpus/<target>/, git-ignored). Inputs in fuzz/regressions/<target>/
# (crashes found earlier) are replayed first; a new crash leaves its input under
# fuzz/artifacts/<target>/ and fails the script: turn it into a regression test in the owning
# crate and copy the input to fuzz/regressions/<target>/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root/fuzz"
secs=${FUZZ_SECS:-20}
all=(job_parser image_decode external_protocol policy_normalize)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi
export RUSTC_BOOTSTRAP=1
cargo fetch --locked --quiet
start=$(date +%s)
if [ $# -eq 0 ]; then
  cargo fuzz build >&2
else
  for target in "${targets[@]}"; do cargo fuzz build "$target" >&2; done
fi
echo "[fuzz] built in $(( $(date +%s) - start )) s" >&2

seeds_of() {
  case $1 in
    job_parser) echo "$root/schemas/examples/valid" "$root/schemas/examples/invalid" ;;
    *) [ ! -d "seeds/$1" ] || echo "seeds/$1" ;;
  esac
}

for target in "${targets[@]}"; do
  if [ -d "regressions/$target" ]; then
    echo "[fuzz] $target: replaying regressions/$target" >&2
    cargo fuzz run "$target" "regressions/$target"/* -- -runs=1 >&2
  fi
  mkdir -p "corpus/$target"
  echo "[fuzz] $target: $secs s" >&2
  # shellcheck disable=SC2046 # seed folders are space-free paths
  cargo fuzz run "$target" "corpus/$target" $(seeds_of "$target") -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >&2
done
echo "[fuzz] ok: ${targets[*]} in $(( $(date +%s) - start )) s" >&2
