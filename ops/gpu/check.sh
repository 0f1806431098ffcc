#!/usr/bin/env bash
# The one prepared GPU check: run on a GPU host that has PyTorch but no compiler and no network,
# from a release binary built elsewhere against the same libtorch version and copied here.
#
#   ops/gpu/check.sh [BINARY]          default: ./inpaint-worker, else target/release/inpaint-worker
#
# In at most CHECK_DEADLINE_SECS (default 480) it:
#   1. prints the host's torch, CUDA and the binary's view of libtorch's CUDA backend;
#   2. runs `bench` on SD-1.5-inpainting's full-size architecture with random weights
#      (nothing to download) in each of CHECK_PRECISIONS (f32,f16,bf16), at every batch of
#      CHECK_BATCHES, and reports batch 1 and the best batch;
#   3. runs `bench --compare-cpu`: the tiny parity case on the GPU in f16 against the CPU in f32,
#      failing above the stated tolerance (mean absolute difference, 0-255 levels);
#   4. when `diffusers` is importable, times diffusers' pipeline on the same architecture, size,
#      steps and batches in the same run and prints the ratio;
#   5. times the UNet step in CHECK_COMPARE_PRECISION with channels-last kernels
#      (`engine.channels_last`) against the dense run of step 2, and says which to configure.
# Everything is written to CHECK_OUT (default ./gpu-check): bench-<precision>.json,
# compare.txt, diffusers.json, channels-last.json, summary.txt.
#
# libtorch comes from the host's PyTorch (`torch/lib`, found through PYTHON, default python3).
# The binary must be built against that version: `cargo build --locked --release -p inpaint-worker`
# for PyTorch 2.13 (target/release/inpaint-worker), and for PyTorch 2.11
# `ops/dev/libtorch-2.11.sh build --locked --release -p inpaint-worker`
# (target/libtorch-2.11/target/release/inpaint-worker).
# CPU dry run (what CI does, with the tiny model):
#   CHECK_DEVICE=cpu CHECK_MODEL=embedded-tiny CHECK_SIZE=64 CHECK_STEPS=2 CHECK_BATCHES=1,2 \
#     CHECK_PRECISIONS=f32,bf16 CHECK_COMPARE_PRECISION=bf16 ops/gpu/check.sh target/release/inpaint-worker
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
started=$(date +%s)
deadline=${CHECK_DEADLINE_SECS:-480}
device=${CHECK_DEVICE:-cuda}
model=${CHECK_MODEL:-full-size-random}
size=${CHECK_SIZE:-512}
steps=${CHECK_STEPS:-50}
batches=${CHECK_BATCHES:-1,2,4,8,16}
precisions=${CHECK_PRECISIONS:-f32,f16,bf16}
compare_precision=${CHECK_COMPARE_PRECISION:-f16}
tolerance=${CHECK_TOLERANCE:-2.0}
out=${CHECK_OUT:-gpu-check}
PYTHON=${PYTHON:-python3}

bin=${1:-}
if [ -z "$bin" ]; then
  for candidate in ./inpaint-worker "$root/target/release/inpaint-worker"; do
    [ -x "$candidate" ] && { bin=$candidate; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "check: no inpaint-worker binary (pass its path)" >&2; exit 2; }
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
say() { printf '%s\n' "$*" | tee -a "$summary"; }
left() { echo $(( deadline - ($(date +%s) - started) )); }
bounded() { # seconds-needed command...: runs with the time left, fails when none is
  local need=$1; shift
  local secs; secs=$(left)
  if [ "$secs" -lt "$need" ]; then say "skipped (time budget spent): $*"; return 1; fi
  timeout "$secs" "$@"
}

torch_lib=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "host: $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())')"
say "binary: $("$bin" --version) ($bin), libtorch from $torch_lib"

status=0
for precision in ${precisions//,/ }; do
  if bounded 20 "$bin" bench --model "$model" --device "$device" --precision "$precision" \
      --size "$size" --steps "$steps" --batches "$batches" --repeats 2 --json \
      > "$out/bench-$precision.json"; then
    "$PYTHON" - "$out/bench-$precision.json" <<'PY' | tee -a "$summary"
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["batches"]
def e2e(b): return b["end_to_end_images_per_s"] or 0.0
best = max(rows, key=e2e)
one = next(b for b in rows if b["images"] == 1) if any(b["images"] == 1 for b in rows) else rows[0]
print(f'{r["precision"]:>5} on {r["device"]} ({r["width"]}x{r["height"]}, {r["steps"]} steps, CUDA backend '
      f'{"present" if r["cuda_backend"] else "absent"}): load {r["load_seconds"]:.1f} s, text {r["text_encoder_ms"]:.1f} ms, '
      f'VAE enc {r["vae_encode_ms"]:.1f} ms / dec {r["vae_decode_ms"]:.1f} ms')
for b in (one, best):
    print(f'      batch {b["images"]:>2}: UNet step {b["unet_step_ms"]:.1f} ms, end to end {e2e(b):.3f} images/s')
print(f'      peak host {r["peak_host_mib"] or 0:.0f} MiB, device {r["device_mib"] or 0:.0f} MiB')
PY
  else
    say "bench $precision failed or timed out"; status=1
  fi
done

if bounded 10 "$bin" bench --compare-cpu --device "$device" --precision "$compare_precision" \
    --tolerance "$tolerance" > "$out/compare.txt"; then
  tee -a "$summary" < "$out/compare.txt"
else
  cat "$out/compare.txt" | tee -a "$summary" || true
  say "parity against the CPU reference FAILED or did not run"; status=1
fi

if "$PYTHON" -c 'import diffusers' 2>/dev/null; then
  best_f16=$("$PYTHON" - "$out/bench-$compare_precision.json" "$batches" <<'PY' 2>/dev/null || echo 1
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["batches"]
    print(max(rows, key=lambda b: b["end_to_end_images_per_s"] or 0)["images"])
except Exception:
    print(sys.argv[2].split(",")[0])
PY
)
  if bounded 30 "$PYTHON" "$here/diffusers_time.py" --model "$model" --device "$device" \
      --precision "$compare_precision" --size "$size" --steps "$steps" --batches "1,$best_f16" \
      > "$out/diffusers.json"; then
    "$PYTHON" - "$out/diffusers.json" "$out/bench-$compare_precision.json" <<'PY' | tee -a "$summary"
import json, sys
d = json.load(open(sys.argv[1]))
try:
    ours = {str(b["images"]): b["end_to_end_images_per_s"] for b in json.load(open(sys.argv[2]))["batches"]}
except Exception:
    ours = {}
for batch, theirs in d["batches"].items():
    mine = ours.get(batch)
    ratio = f"{mine / theirs:.2f}x" if mine and theirs else "n/a"
    print(f'diffusers {d["diffusers"]} {d["precision"]} batch {batch}: {theirs:.3f} images/s; '
          f'inpaint-engine {mine or 0:.3f} images/s: {ratio}')
PY
  else
    say "diffusers timing failed or timed out"
  fi
else
  say "diffusers is not importable here: no side-by-side ratio"
fi
# The channels-last default is chosen by this measurement: UNet step only (no end-to-end run).
if [ -s "$out/bench-$compare_precision.json" ] && bounded 20 "$bin" bench --model "$model" \
    --device "$device" --precision "$compare_precision" --size "$size" --steps 0 \
    --batches "$batches" --repeats 2 --channels-last --json > "$out/channels-last.json"; then
  "$PYTHON" - "$out/bench-$compare_precision.json" "$out/channels-last.json" <<'PY' | tee -a "$summary"
import json, sys
dense = {b["images"]: b["unet_step_ms"] for b in json.load(open(sys.argv[1]))["batches"]}
nhwc = {b["images"]: b["unet_step_ms"] for b in json.load(open(sys.argv[2]))["batches"]}
ratios = []
for batch in sorted(dense):
    if batch in nhwc and nhwc[batch]:
        ratios.append(dense[batch] / nhwc[batch])
        print(f"channels-last batch {batch:>2}: UNet step {nhwc[batch]:.1f} ms vs dense {dense[batch]:.1f} ms: "
              f"{dense[batch] / nhwc[batch]:.2f}x")
if ratios:
    verdict = "true" if min(ratios) > 1.02 else "false"
    print(f"channels-last: engine.channels_last = {verdict} on this host (faster at every batch: {verdict})")
PY
else
  say "channels-last timing failed, timed out or had no dense run to compare with"
fi
say "check: $(( $(date +%s) - started )) s, $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
