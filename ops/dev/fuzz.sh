#!/usr/bin/env bash
# Fuzzes everything that reads untrusted bytes, for a bounded time: the cargo-fuzz targets in
# fuzz/ (job_parser, image_decode, policy_normalize), FUZZ_SECS seconds each (default 30).
#   ops/dev/fuzz.sh [TARGET...]
# cargo-fuzz needs nightly features: with the stable toolchain RUSTC_BOOTSTRAP=1 unlocks them
# (rustup cannot download toolchains on the build machines). cargo-fuzz is installed on first use
# (`cargo install --locked cargo-fuzz`). Inputs in fuzz/regressions/<target>/ (crashes found
# earlier) are replayed first; a new crash leaves its input under fuzz/artifacts/<target>/ and
# fails the script: turn it into a regression test in the owning crate and copy it there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root/fuzz"
secs=${FUZZ_SECS:-30}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(job_parser image_decode policy_normalize)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz >&2
export RUSTC_BOOTSTRAP=1
# The image target links libtorch through the worker crate.
export LD_LIBRARY_PATH="$root/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBTORCH="${LIBTORCH:-$root/.libtorch}"

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  if [ -d "regressions/$target" ]; then
    echo "[fuzz] $target: replaying regressions/$target" >&2
    cargo fuzz run "$target" "regressions/$target" -- -runs=0 >&2
  fi
  echo "[fuzz] $target: $secs s" >&2
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=4096 >&2
done
echo "[fuzz] ok: ${targets[*]}" >&2
