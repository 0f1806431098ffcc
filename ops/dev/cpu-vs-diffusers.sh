#!/usr/bin/env bash
# The engine against diffusers on the CPU, side by side in one process tree (issue #13 item 8):
# SD-1.5-inpainting's full-size architecture with random weights, f32, the same thread count on
# both sides. Times one guided UNet step for --batch images (2 x batch UNet rows: classifier-free
# guidance doubles the batch), VAE decode and encode of one image, the text encoder, and each
# process's peak RSS (VmHWM), then prints a table with the ratios (or JSON with --json).
#
#   ops/dev/cpu-vs-diffusers.sh [--json] [--threads 2] [--batch 2] [--size 512] [--repeats 2]
#                               [--model full-size-random|embedded-tiny] [BINARY]
#
# BINARY: a release build of the worker (default target/release/inpaint-worker), run with
# LD_LIBRARY_PATH=.libtorch/lib. diffusers: .venv/bin/python (or $PYTHON) with
# tests/parity/requirements.txt installed. The engine side is `inpaint-worker bench`, the
# diffusers side ops/dev/diffusers_parts.py; they run one after the other (never at once: they
# would share the cores), each after one untimed warm-up per part, reporting the best of
# --repeats. Both sides get OMP_NUM_THREADS=MKL_NUM_THREADS=--threads (libtorch sizes its
# intra-op pool from it; diffusers also calls torch.set_num_threads). Full size on a quiet 2-core
# machine: about 5 minutes with --repeats 1, 7 with the default 2 (longer when the cores are shared).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

binary=target/release/inpaint-worker json= threads=2 batch=2 size=512 repeats=2 model=full-size-random
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json=--json ;;
    --threads) threads=$2; shift ;;
    --batch) batch=$2; shift ;;
    --size) size=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --model) model=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) binary=$1 ;;
  esac
  shift
done
if [ ! -x "$binary" ]; then
  echo "no worker binary at $binary: build one (cargo build --release --locked -p inpaint-worker) or pass its path" >&2
  exit 2
fi
python=${PYTHON:-.venv/bin/python}
if ! "$python" -c 'import diffusers, transformers' 2>/dev/null; then
  echo "$python cannot import diffusers/transformers: $python -m pip install --no-cache-dir -r tests/parity/requirements.txt" >&2
  exit 2
fi

export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
export LD_LIBRARY_PATH="$root/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# (user + system CPU seconds) / wall seconds of a `/usr/bin/time -f '%e %U %S'` record: about
# --threads when both threads were busy throughout (loading and warm-up included).
cpu_use() { awk '{ printf "%.2f cores", ($2 + $3) / $1 }' "$1"; }

load_start=$(loadavg)
echo "engine: $binary bench on $model, $threads threads..." >&2
/usr/bin/time -f '%e %U %S' -o "$tmp/engine.time" "$binary" bench --model "$model" --device cpu \
  --precision f32 --size "$size" --batches "$batch" --steps 0 --repeats "$repeats" --json \
  > "$tmp/engine.json" 2> "$tmp/engine.err" || { cat "$tmp/engine.err" >&2; exit 1; }
load_mid=$(loadavg)
echo "diffusers: ops/dev/diffusers_parts.py on $model, $threads threads..." >&2
/usr/bin/time -f '%e %U %S' -o "$tmp/diffusers.time" "$python" ops/dev/diffusers_parts.py measure \
  --model "$model" --size "$size" --batch "$batch" --repeats "$repeats" --threads "$threads" \
  > "$tmp/diffusers.json" 2> "$tmp/diffusers.err" || { cat "$tmp/diffusers.err" >&2; exit 1; }
load_end=$(loadavg)

"$python" ops/dev/diffusers_parts.py report "$tmp/engine.json" "$tmp/diffusers.json" $json \
  --engine-threads "$threads" --engine-cpu "$(cpu_use "$tmp/engine.time")" \
  --diffusers-cpu "$(cpu_use "$tmp/diffusers.time")" \
  --load "1/5/15-min load average at start $load_start, between $load_mid, end $load_end ($(nproc) CPUs)"
