#!/bin/sh
# Side by side: shakeshake's cpu backend and Debian's PyTorch 1.13 training
# 26 2x32d on the CPU, float32, the same threads, batch 64 and 128. Runs
# alternate (ours, theirs, ours, theirs...) so that a busy machine hurts both
# alike; each figure is the median of the rounds. Needs a build in build/
# (or BUILD=dir) and python3-torch.
#
#   bench/compare_torch.sh [rounds=3] [threads=2] [steps=5]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build}
rounds=3; threads=2; steps=5
for a in "$@"; do
    case $a in
    rounds=*) rounds=${a#rounds=} ;;
    threads=*) threads=${a#threads=} ;;
    steps=*) steps=${a#steps=} ;;
    *) echo "usage: $0 [rounds=N] [threads=N] [steps=N]" >&2; exit 2 ;;
    esac
done
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u +%Y-%m-%d)"
for batch in 64 128; do
    r=1
    while [ "$r" -le "$rounds" ]; do
        "$build/bench_train" backend=cpu batch="$batch" threads="$threads" steps="$steps" >>"$tmp/ours.$batch"
        OMP_NUM_THREADS=$threads "$py" "$here/bench/torch_bench.py" batch="$batch" threads="$threads" steps="$steps" >>"$tmp/torch.$batch"
        r=$((r + 1))
    done
done
median() { # median of a key's values in a file of key=value lines
    sed -n "s/.* $1=\([0-9.]*\).*/\1/p" "$2" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}
printf '\n%-6s %-22s %10s %10s %12s\n' batch impl "img/s" "ms/step" "peak RSS MB"
for batch in 64 128; do
    for who in ours torch; do
        f=$tmp/$who.$batch
        impl=$(sed -n 's/^impl=\([^ ]*\).*/\1/p' "$f" | head -1)
        printf '%-6s %-22s %10s %10s %12s\n' "$batch" "$impl" "$(median img_per_s "$f")" \
            "$(median ms_per_step "$f")" "$(median peak_rss_mb "$f")"
    done
    o=$(median img_per_s "$tmp/ours.$batch"); t=$(median img_per_s "$tmp/torch.$batch")
    om=$(median peak_rss_mb "$tmp/ours.$batch"); tm=$(median peak_rss_mb "$tmp/torch.$batch")
    echo "$batch" "$o" "$t" "$om" "$tm" | awk '{printf "%-6s speed %.2fx PyTorch, memory %.2fx PyTorch\n", $1, $2/$3, $4/$5}'
done
