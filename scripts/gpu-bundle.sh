#!/usr/bin/env bash
# Builds, here, what scripts/gpu-check.sh runs on the lent GPU machine (no
# package registry, Lua, SQLite, libgit2 or oneDNN there) and bundles it into
# .gpu/ with ../shared/device/bundle.sh: bench_train, sweep and test_cuda,
# with the cuda backend, each with the non-CUDA shared
# libraries it needs; the GPU machine's own CUDA libraries are found there by
# .gpu/env.sh.
#
#   scripts/gpu-bundle.sh        # builds in build/ (BUILD=dir), bundles in .gpu/ (DEST=dir)
#
# The device tool carries at most 64 MiB with the working tree. oneDNN and
# the orchestrator's libraries (the sweep command's) come to about 100 MiB,
# so when the bundle is over 40 MiB its lib/ folder travels as
# lib.tar.gz (about a third of it), which gpu-check.sh unpacks first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
bundle_sh=${BUNDLE_SH:-$root/../shared/device/bundle.sh}
dest=${DEST:-$root/.gpu}
cd "$root"

[ -x "$bundle_sh" ] || { echo "gpu-bundle: $bundle_sh not found (set BUNDLE_SH)" >&2; exit 2; }
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSHAKE_WITH_CUDA=ON
cmake --build "$build" -j"$(nproc)" --target bench_train sweep test_cuda
grep -q '^SHAKE_WITH_CUDA:BOOL=ON' "$build/CMakeCache.txt" || {
    echo "gpu-bundle: $build is not configured with the cuda backend (SHAKE_WITH_CUDA)" >&2
    exit 1
}
# The backend must be in the binary, not just the option in the cache.
if "$build/bench_train" backend=cuda steps=1 warmup=0 2>&1 | grep -q "no backend 'cuda'"; then
    echo "gpu-bundle: $build/bench_train has no cuda backend" >&2
    exit 1
fi

rm -rf "$dest"
"$bundle_sh" "$dest" "$build/bench_train" "$build/sweep" "$build/tests/test_cuda"
mib() { du -sm "$1" | cut -f1; }
if [ "$(mib "$dest")" -gt 40 ]; then
    tar -C "$dest" -czf "$dest/lib.tar.gz" lib
    rm -rf "${dest:?}/lib"
    echo "gpu-bundle: lib/ packed into lib.tar.gz, unpacked by scripts/gpu-check.sh"
fi
total=$(mib "$dest")
echo "gpu-bundle: $total MiB in $dest"
if [ "$total" -gt 60 ]; then
    echo "gpu-bundle: over 60 MiB, which with the working tree passes the device tool's" \
        "64 MiB: leave sweep out of the bundle" >&2
    exit 1
fi
echo "next: the device tool's run with carry [\".gpu\"] and command scripts/gpu-check.sh"
