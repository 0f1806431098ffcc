#!/bin/sh
# collect-libs.sh SITE_PACKAGES OUT: copies the shared libraries the worker loads from an installed
# torch wheel (torch/lib and the nvidia-* packages' lib folders) into one flat folder OUT.
set -eu
site=$1; out=$2
mkdir -p "$out"
for f in "$site"/torch/lib/*.so*; do
  case $(basename "$f") in
    libtorch_python.so|libshm*) ;;           # Python bindings and their shared-memory helper
    *) cp -a "$f" "$out"/ ;;
  esac
done
for dir in "$site"/nvidia/*/lib; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*.so*; do
    case $(basename "$f") in
      libnvperf*|libpcsamplingutil*|libcheckpoint*) ;;            # profiling tools (libtorch_cpu
                                                                  # does need libcupti: kept)
      nvshmem_bootstrap_*|nvshmem_transport_*) ;;  # multi-node NVSHMEM plugins (MPI, UCX, IB)
      libcufftw*|libnvblas*|libcusolverMg*|libcufile_rdma*) ;;    # APIs libtorch does not call
      *) cp -a "$f" "$out"/ ;;
    esac
  done
done
# Fail the build here, not at run time, if a library libtorch needs was left out.
missing=$(for f in "$out"/*.so*; do
  readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
done | sort -u | while read -r lib; do
  # libcuda.so.1 is the driver's: the NVIDIA container toolkit mounts it into GPU containers.
  [ "$lib" = libcuda.so.1 ] || [ -e "$out/$lib" ] || ldconfig -p | grep -q "^[[:space:]]*$lib " || echo "$lib"
done)
if [ -n "$missing" ]; then echo "collect-libs: missing: $missing" >&2; exit 1; fi
du -sh "$out" >&2
