#!/usr/bin/env bash
# The GPU checks, in one run on the lent GPU machine, from the repository
# root, after scripts/gpu-bundle.sh built and bundled the binaries into .gpu/
# here. Through the device tool: run with carry [".gpu"], command
# scripts/gpu-check.sh and a timeout_s of 600.
#
# Steps, each under its own timeout, all within BUDGET seconds (default 540;
# a step that would pass it is skipped and says so; QUICK=1 leaves out the
# fp32 benchmarks and the per-call 2x32d one, for a rerun after a change):
#   the GPU and driver (nvidia-smi);
#   test_cuda (cuda against ref in fp32 and bf16, device-side draws,
#   checkpoints between backends, whole steps and CUDA graphs against the
#   per-call path, one, two, three and four streams against each other bit
#   for bit, a bad device);
#   the cuDNN algorithms the backend picks for 26 2x32d (SHAKE_CUDA_VERBOSE),
#   and every candidate's time as cuDNN's Find measures it (bf16);
#   `sweep run --gpus 0` on a two-cell sweep (runs placed on the GPU);
#   20 steps of 26 2x32d bf16 with 1 (twice), 2, 3 and 4 streams, the
#   checkpoints compared bit for bit (scripts/ckpt_same.py);
#   the same with SHAKE_CUDA_FIND=1, straight against 10 steps and a resume
#   that takes its algorithms from the first part's record;
#   compute-sanitizer memcheck over a few training steps: `sweep train` on
#   the whole-step path (data on the GPU, a captured and a replayed graph),
#   then bench_train's per-call path (a ResNet in fp32, a ResNeXt in bf16);
#   two real epochs of `sweep train` on synthetic CIFAR-shaped data (the
#   training path: data, augmentation and the whole step on the GPU, as a
#   CUDA graph; the second epoch timed, training and evaluation);
#   bench_train (cuda, the per-call path: forward, backward and update
#   from the host) and bench/torch_gpu_bench.py (PyTorch, eager,
#   channels_last) on 26 2x32d and 26 2x96d at batch 128, bf16 and fp32,
#   with the GPU memory in use sampled by nvidia-smi every 100 ms (the same
#   measure for both: peak minus what was in use before the run); the bf16
#   epochs again with SHAKE_CUDA_MERGE=0 (a block's two first convolutions
#   each on its own, not merged into one), with SHAKE_CUDA_FIND=1 (cuDNN's
#   timed algorithms), with SHAKE_CUDA_STREAMS=1 (a block's branches one
#   after the other, not side by side), =2 (the branches only beside each
#   other) and =4 (the branches' filter gradients beside them as well),
#   against 3 (the default: the projection shortcuts beside the branches);
#   the ResNeXt 29 2x4x64d
#   through bench_train;
#   Nsight Compute's time of each kernel of a 2x32d bf16 step (profile.txt).
# The tests need no fixtures from the source tree: their data is synthetic
# and their scratch folders go to $TMPDIR or /tmp.
#
# Logs go to $OUT (the device tool's folder there; ./gpu-out elsewhere), in
# the few files the device tool brings back: system.txt, tests.log,
# algos.txt (the cuDNN algorithms picked), algos-find.txt (each candidate's
# time as cuDNN's Find measured it), sanitizer.log, bench.log,
# profile.txt and summary.txt, the table printed last.
set -u
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-./gpu-out}
budget=${BUDGET:-540}
py=${PYTHON:-python3}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
: >"$out/tests.log"
: >"$out/algos.txt"
: >"$out/algos-find.txt"
: >"$out/sanitizer.log"
: >"$out/bench.log"

if [ -f .gpu/lib.tar.gz ] && [ ! -d .gpu/lib ]; then
    tar -C .gpu -xzf .gpu/lib.tar.gz || { echo "gpu-check: cannot unpack .gpu/lib.tar.gz" >&2; exit 1; }
fi
if [ ! -f .gpu/env.sh ]; then
    echo "gpu-check: no .gpu/env.sh: run scripts/gpu-bundle.sh where the code is built" \
        "and carry .gpu" >&2
    exit 1
fi
# PyTorch brings its own cuDNN and refuses another (it was built against
# a newer one than the machine's): its runs get the environment as it was
orig_ld=${LD_LIBRARY_PATH-}
# shellcheck source=/dev/null
. .gpu/env.sh
bin=.gpu/bin
# env.sh looks in ldconfig's cache, /usr/local/cuda* and /opt; where a library
# is still missing, look in the CUDA toolkit's folders and the Python
# packages' nvidia/*/lib folders, then anywhere on this filesystem.
missing=$(for b in "$bin"/*; do ldd "$b" 2>/dev/null; done | awk '/not found/ {print $1}' | sort -u)
if [ -n "$missing" ]; then
    echo "gpu-check: after env.sh, not found: $(echo $missing)"
    dirs=$(
        ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib 2>/dev/null
        "$py" -c 'import glob, site
for d in site.getsitepackages(): print("\n".join(glob.glob(d + "/nvidia/*/lib")))' 2>/dev/null
    )
    for lib in $missing; do
        found=""
        for d in $dirs; do [ -e "$d/$lib" ] && { found=$d/$lib; break; }; done
        [ -n "$found" ] || found=$(find / -xdev -name "$lib" 2>/dev/null | head -n 1)
        if [ -n "$found" ]; then
            echo "gpu-check: $lib from $found"
            LD_LIBRARY_PATH="$(dirname "$found"):$LD_LIBRARY_PATH"
            export LD_LIBRARY_PATH
        else
            echo "gpu-check: $lib not found on this machine"
        fi
    done
fi
# the CUDA libraries the binaries will load, with their versions
libs=$(ldd "$bin/test_cuda" 2>&1 | awk '/cud|cublas|not found/ {print $1, $3}' |
    while read -r n p; do echo "$n -> $(readlink -f "$p" 2>/dev/null || echo "$p")"; done)
echo "$libs"

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -srm), $(nproc) cores"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "$libs"
    LD_LIBRARY_PATH=$orig_ld "$py" -c 'import torch
print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>&1
    nvidia-smi 2>&1
    echo
    for b in "$bin"/*; do echo "== ldd $b"; ldd "$b" 2>&1; done
} >"$out/system.txt"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
nvidia-smi 2>&1 | head -n 20

# run_step NAME LOG TIMEOUT CMD...: runs CMD under its timeout (cut to what
# the budget has left), output to $tmp/NAME.out and appended to LOG under a
# header; sets rc (125: skipped for the budget) and secs.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local left=$((budget - (SECONDS - start)))
    secs=0
    if [ "$left" -lt 20 ]; then
        rc=125
        echo "== $name: skipped, ${left}s of the ${budget}s budget left" | tee -a "$log" \
            >"$tmp/$name.out"
        failures+=("$name: skipped, ${left}s of the ${budget}s budget left")
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (timeout ${limit}s): $*" | tee -a "$log"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$tmp/$name.out" 2>&1
    rc=$?
    secs=$((SECONDS - t0))
    cat "$tmp/$name.out" >>"$log"
    echo "== $name: exit $rc after ${secs}s" | tee -a "$log"
    echo >>"$log"
    [ "$rc" = 0 ] || failures+=("$name: $(grep -v '^ *$' "$tmp/$name.out" | tail -n 1 | cut -c1-200)")
}

verdict() { # exit status -> word
    case $1 in
    0) echo pass ;;
    77) echo skipped ;;
    124 | 137) echo "TIMEOUT" ;;
    125) echo "not run (budget)" ;;
    *) echo "FAIL (exit $1)" ;;
    esac
}

results=()
failures=()
status=0
note() { results+=("$(printf '%-30s %-22s %5ss  %s' "$1" "$2" "$3" "$4")"); }

# ---- tests ----
t=test_cuda
limit=180
run_step "$t" "$out/tests.log" "$limit" "$bin/$t"
[ "$rc" = 0 ] || status=1
counts=$(sed -n 's/^\[  \(PASSED\|FAILED\)  \] \([0-9]*\) test.*/\2 \L\1/p' "$tmp/$t.out" |
    paste -sd, -)
failed=$(sed -n 's/^\[  FAILED  \] \([^0-9].*\)/\1/p' "$tmp/$t.out" | paste -sd';' -)
[ -n "$counts" ] || counts=$(head -n 1 "$tmp/$t.out" | cut -c1-100)
note "$t" "$(verdict $rc)" "$secs" "${counts}${failed:+ -- failed: $failed}"

# ---- which cuDNN algorithms the backend picks (SHAKE_CUDA_VERBOSE) ----
quick=${QUICK:-0}
precisions="bf16 fp32"
[ "$quick" = 1 ] && precisions=bf16
for p in $precisions; do
    run_step "algos-$p" "$out/algos.txt" 60 env SHAKE_CUDA_VERBOSE=1 "$bin/sweep" train \
        dataset=synthetic backend=cuda precision="$p" depth=26 width=32 batch=128 steps=3 \
        epochs=1 out="$tmp/algos-$p"
    [ "$rc" = 0 ] || status=1
    note "algos-$p" "$(verdict $rc)" "$secs" \
        "$(grep -c '^cuda: ' "$tmp/algos-$p.out") convolutions in algos.txt"
done
# every candidate cuDNN's Find times, with its time (SHAKE_CUDA_FIND=1): how
# far the heuristics' picks above are from the fastest, convolution by
# convolution
run_step algos-find-bf16 "$out/algos-find.txt" 90 env SHAKE_CUDA_VERBOSE=1 SHAKE_CUDA_FIND=1 \
    "$bin/sweep" train dataset=synthetic backend=cuda precision=bf16 depth=26 width=32 \
    batch=128 steps=3 epochs=1 out="$tmp/algos-find-bf16"
[ "$rc" = 0 ] || status=1
note algos-find-bf16 "$(verdict $rc)" "$secs" \
    "$(grep -c '^cuda: find: ' "$tmp/algos-find-bf16.out") candidates timed in algos-find.txt"
if [ "$rc" = 0 ] && "$py" scripts/find_gap.py "$tmp/algos-bf16.out" "$tmp/algos-find-bf16.out" \
    >"$tmp/find-gap.txt" 2>&1; then
    cat "$tmp/find-gap.txt" >>"$out/algos-find.txt"
    note find-gap pass 0 "$(sed -n 's/^all  *//p' "$tmp/find-gap.txt" | awk \
        '{printf "ms a step: heuristics %s, fastest det. %s, any %s", $1, $2, $3}')"
else
    note find-gap "not run" 0 "$(tail -n 1 "$tmp/find-gap.txt" 2>/dev/null | cut -c1-80)"
fi

# ---- the orchestrator placing runs on the GPU (sweep run --gpus 0) ----
# two cells of a small network, one short epoch each on synthetic data; the
# runs must finish, and record backend cuda on cuda:0
cat >"$tmp/gpu-smoke.lua" <<'LUA'
local sweep = require "sweep"
return sweep.sweep{
  name = "gpu-smoke",
  title = "GPU check: two cells, synthetic data, one short epoch",
  base = {dataset = "synthetic", arch = "resnet", depth = 8, width = 16, epochs = 1,
          batch = 128, lr = 0.1, train_subset = 3000},
  cells = {sweep.cell(sweep.mode("even-even")), sweep.cell(sweep.mode("shake-shake-image"))},
  label = function(c) return sweep.mode_name(c) .. " " .. sweep.net_name(c) end,
  layout = {row = sweep.mode_name, col = sweep.net_name},
}
LUA
# shellcheck disable=SC2016  # expanded by the inner shell
run_step sweep-gpus "$out/tests.log" 90 bash -c '
    cd "$1" && "$0" run gpu-smoke.lua --db s.db --gpus 0 && "$0" report --db s.db &&
        "$0" show 1 --db s.db | grep "backend cuda on cuda:0" &&
        "$0" show 2 --db s.db | grep "backend cuda on cuda:0"' "$PWD/$bin/sweep" "$tmp"
[ "$rc" = 0 ] || status=1
note sweep-gpus "$(verdict $rc)" "$secs" "$(grep -m1 'done, ' "$tmp/sweep-gpus.out" | cut -c1-80)"

# ---- the stream counts at full size: the same weights, bit for bit ----
# 20 steps of 26 2x32d bf16 (2 eager, 18 replayed from the graph) with 1, 2,
# 3 and 4 streams, and with 1 again (whether a run repeats itself at all);
# every tensor of the checkpoints must agree to the bit (a missing wait
# between streams is a race, likelier at these sizes than in test_cuda's
# small networks)
# shellcheck disable=SC2016  # expanded by the inner shell
run_step streams-bitwise "$out/tests.log" 120 bash -c '
    for r in 1 1-again 2 3 4; do
        SHAKE_CUDA_STREAMS=${r%-again} "$0" train dataset=synthetic backend=cuda precision=bf16 depth=26 \
            width=32 batch=128 steps=20 epochs=1 out="$1/streams-$r" >"$1/streams-$r.out" 2>&1 ||
            { cat "$1/streams-$r.out"; exit 1; }
    done
    "$2" scripts/ckpt_same.py "$1"/streams-{1,1-again,2,3,4}/checkpoint.safetensors' \
    "$bin/sweep" "$tmp" "$py"
[ "$rc" = 0 ] || status=1
note streams-bitwise "$(verdict $rc)" "$secs" \
    "$(grep -c 'bit for bit' "$tmp/streams-bitwise.out") of 4 runs as 1 stream's, 26 2x32d"

# ---- cuDNN's Find and an exact resume: the algorithm record ----
# 20 steps of 26 2x32d bf16 with SHAKE_CUDA_FIND=1 straight, against 10
# steps and a resume in a new process to 20; the resumed run must take every
# algorithm from the first part's record (cuda-algorithms.json; its Find
# could order the candidates otherwise), search nothing again, and end bit
# for bit where the straight run did. The first part starts from the
# straight run's record: two processes that each searched could have picked
# differently before any resume.
# shellcheck disable=SC2016  # expanded by the inner shell
run_step find-resume "$out/tests.log" 120 bash -c '
    set -e
    a="dataset=synthetic backend=cuda precision=bf16 depth=26 width=32 batch=128 epochs=1"
    SHAKE_CUDA_FIND=1 "$0" train $a steps=20 out="$1/find-straight" >"$1/find-straight.out" 2>&1 ||
        { cat "$1/find-straight.out"; exit 1; }
    mkdir -p "$1/find-part"
    cp "$1/find-straight/cuda-algorithms.json" "$1/find-part/"
    SHAKE_CUDA_FIND=1 "$0" train $a steps=10 out="$1/find-part" >"$1/find-part.out" 2>&1 ||
        { cat "$1/find-part.out"; exit 1; }
    SHAKE_CUDA_FIND=1 SHAKE_CUDA_VERBOSE=1 "$0" train resume="$1/find-part/checkpoint.safetensors" \
        steps=20 out="$1/find-part" >"$1/find-resumed.out" 2>&1 || { cat "$1/find-resumed.out"; exit 1; }
    again=$(grep -c "candidates, find)" "$1/find-resumed.out" || true)
    echo "resumed: $(grep -c "candidates, record)" "$1/find-resumed.out") convolutions from the record," \
        "$again searched again"
    [ "$again" = 0 ] || { echo "the resumed run searched $again convolutions again"; exit 1; }
    "$2" scripts/ckpt_same.py "$1"/find-{straight,part}/checkpoint.safetensors' \
    "$bin/sweep" "$tmp" "$py"
[ "$rc" = 0 ] || status=1
note find-resume "$(verdict $rc)" "$secs" "$(grep -m1 '^resumed: ' "$tmp/find-resume.out" | cut -c1-80)"

# ---- memcheck ----
san=$(command -v compute-sanitizer ||
    find /usr/local/cuda*/bin /opt -name compute-sanitizer -type f 2>/dev/null | head -n 1)
sanitize() { # NAME bench_train arguments...
    local name=$1
    shift
    if [ -z "$san" ]; then
        note "$name" "not run" 0 "compute-sanitizer not found"
        status=1
        return
    fi
    run_step "$name" "$out/sanitizer.log" 90 "$san" --tool memcheck --leak-check full \
        --print-limit 20 --error-exitcode 99 "$bin/bench_train" backend=cuda steps=2 warmup=1 \
        batch=8 "$@"
    [ "$rc" = 0 ] || status=1
    local summary
    summary=$(grep -m1 'ERROR SUMMARY' "$tmp/$name.out" | sed 's/^=* *//')
    note "$name" "$(verdict $rc)" "$secs" "$summary"
}
# the training path first: 4 steps of 16, the third captured, the fourth replayed
if [ -n "$san" ]; then
    run_step memcheck-train-bf16 "$out/sanitizer.log" 120 "$san" --tool memcheck \
        --print-limit 20 --error-exitcode 99 "$bin/sweep" train dataset=synthetic \
        backend=cuda precision=bf16 depth=8 width=16 batch=16 steps=4 epochs=1 \
        out="$tmp/memcheck-train"
    [ "$rc" = 0 ] || status=1
    note memcheck-train-bf16 "$(verdict $rc)" "$secs" \
        "$(grep -m1 'ERROR SUMMARY' "$tmp/memcheck-train-bf16.out" | sed 's/^=* *//')"
fi
sanitize memcheck-resnet8-fp32 depth=8 width=16 precision=fp32
# instrumenting cuDNN's kernels is what takes the time: a second run would
# time out too
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    note memcheck-resnext11-bf16 "not run" 0 "the first memcheck timed out"
else
    sanitize memcheck-resnext11-bf16 arch=resnext depth=11 width=8 groups=4 precision=bf16
fi

# ---- benchmarks ----
# GPU memory in use every 100 ms, one nvidia-smi call a sample: a killed
# nvidia-smi -lms may lose its last, buffered lines.
mem_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -n 1; }
sample_mem() { while :; do mem_used; sleep 0.1; done; }
key() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" "$2" | head -n 1; }
declare -A ips
bench_rows=()
bench() { # NAME CMD...: one benchmark with the GPU memory it uses
    local name=$1
    shift
    local idle sampler="" mem=n/a
    idle=$(mem_used)
    if [ -n "$idle" ]; then
        sample_mem >"$tmp/$name.mem" &
        sampler=$!
    fi
    run_step "$name" "$out/bench.log" 120 "$@"
    [ "$rc" = 0 ] || status=1
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
        local peak
        peak=$(sort -n "$tmp/$name.mem" | tail -n 1)
        [ -n "$peak" ] && [ "$rc" != 125 ] && mem=$((peak - idle))
        echo "== $name: GPU memory in use, peak over the $idle MiB before: $mem MiB" \
            >>"$out/bench.log"
    fi
    local f=$tmp/$name.out est epoch
    ips[$name]=$(key img_per_s "$f")
    est=$(key epoch_s_est "$f")
    epoch=$(key epoch_s "$f")
    [ -n "$epoch" ] && est="$est (run: $epoch)"
    bench_rows+=("$(printf '%-25s %-12s %9s %8s %-19s %8s %8s' "$name" "$(verdict $rc)" \
        "${ips[$name]:--}" "$(key ms_per_step "$f")" "${est:--}" "$mem" \
        "$(key peak_gpu_mb "$f")")")
}
ours() { # WIDTH PRECISION [bench_train arguments]
    bench "ours-w$1-$2" "$bin/bench_train" backend=cuda depth=26 width="$1" batch=128 \
        precision="$2" steps=50 warmup=10 "${@:3}"
}
theirs() { # WIDTH PRECISION
    bench "torch-w$1-$2" env LD_LIBRARY_PATH="$orig_ld" "$py" bench/torch_gpu_bench.py depth=26 width="$1" batch=128 \
        precision="$2" steps=50 warmup=10
}
epoch_run() { # WIDTH PRECISION [TAG]: `sweep train`, 2 epochs; prints the second's figures
    # shellcheck disable=SC2016  # expanded by the inner shell
    bench "epoch-w$1-$2${3:+-$3}" bash -c '
        "$0" train dataset=synthetic backend=cuda precision="$1" depth=26 width="$2" \
            batch=128 epochs=2 lr=0.1 out="$3" >"$3.out" 2>&1 || { cat "$3.out"; exit 1; }
        tail -n 4 "$3.out"
        grep -m 3 "cuda backend" "$3.out"
        "$4" -c "
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ep = [e for e in ev if e.get(\"event\") == \"epoch\"]
end = [e for e in ev if e.get(\"event\") == \"end\"][-1]
e = ep[-1]
print(\" img_per_s=%.1f ms_per_step=%.2f epoch_s=%.2f train_s=%.2f eval_s=%.2f\" % (
    50000 / e[\"seconds\"], 1000 * e[\"seconds\"] / 391, e[\"seconds\"] + e[\"eval_seconds\"],
    e[\"seconds\"], e[\"eval_seconds\"]))
# the two checkpoints (the first written while epoch 2 trained, the last
# before the run ended): time written, and time the loop stood still
print(\" ckpt_write_s=%.3f ckpt_wait_s=%.3f\" % (
    end[\"checkpoint_write_seconds\"], end[\"checkpoint_wait_seconds\"]))
" "$3/log.jsonl"' "$bin/sweep" "$2" "$1" "$tmp/run-w$1-$2${3:+-$3}" "$py"
}
# the comparisons that matter most first, in case the budget runs out;
# fp32 2x96d as bench_train's estimate (two real fp32 epochs of it cost
# a minute of the lease)
epoch_run 32 bf16
theirs 32 bf16
epoch_run 96 bf16
theirs 96 bf16
# a block's two first convolutions each on its own, against merged into
# one (the default)
SHAKE_CUDA_MERGE=0 epoch_run 32 bf16 apart
SHAKE_CUDA_MERGE=0 epoch_run 96 bf16 apart
# cuDNN's Find (it times the candidates) against its heuristics, the
# default: whether the fastest algorithms beat the first deterministic ones
SHAKE_CUDA_FIND=1 epoch_run 32 bf16 find
SHAKE_CUDA_FIND=1 epoch_run 96 bf16 find
# everything on one stream, the branches on two (the shortcuts with branch
# 0), and with the branches' filter gradients on a fourth, against three
# (the default: branches and projection shortcuts side by side)
SHAKE_CUDA_STREAMS=1 epoch_run 32 bf16 1stream
SHAKE_CUDA_STREAMS=2 epoch_run 32 bf16 2streams
SHAKE_CUDA_STREAMS=4 epoch_run 32 bf16 4streams
SHAKE_CUDA_STREAMS=1 epoch_run 96 bf16 1stream
SHAKE_CUDA_STREAMS=2 epoch_run 96 bf16 2streams
SHAKE_CUDA_STREAMS=4 epoch_run 96 bf16 4streams
if [ "$quick" != 1 ]; then
    epoch_run 32 fp32
    theirs 32 fp32
    ours 96 fp32
    theirs 96 fp32
    ours 32 bf16
fi
# the paper's ResNeXt 29 2x4x64d (grouped convolutions at full size): steps only
bench ours-rx29-bf16 "$bin/bench_train" backend=cuda arch=resnext depth=29 width=64 groups=4 \
    batch=128 precision=bf16 steps=20 warmup=5

# ---- where a step's time goes: each kernel's time from Nsight Compute ----
# bench_train's per-call path, 26 2x32d bf16 at batch 128: a warm-up step, a
# timed step and an evaluation batch; kernels summed by name (profile.txt).
ncu_bin=$(command -v ncu || find /usr/local/cuda*/bin /opt -name ncu -type f 2>/dev/null | head -n 1)
if [ -n "$ncu_bin" ]; then
    : >"$out/profile.txt"
    run_step profile "$out/profile.txt" 90 "$ncu_bin" --clock-control none \
        --cache-control none --metrics gpu__time_duration.sum --csv --print-units base --launch-count 3000 \
        "$bin/bench_train" backend=cuda depth=26 width=32 batch=128 precision=bf16 steps=1 \
        warmup=1
    # shellcheck disable=SC2016
    "$py" -c '
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    sys.exit("no kernel rows")
h = rows[0]
name, val = h.index("Kernel Name"), h.index("Metric Value")
t = collections.defaultdict(float); n = collections.Counter()
for r in rows[1:]:
    try: v = float(r[val].replace(",", ""))
    except ValueError: continue
    k = r[name].split("(")[0][:90]; t[k] += v; n[k] += 1
tot = sum(t.values())
print("kernel time over the profiled launches: %.3f ms in %d launches" % (tot / 1e6, sum(n.values())))
for k, v in sorted(t.items(), key=lambda x: -x[1])[:40]:
    print("%9.3f ms %5.1f%% %5d  %s" % (v / 1e6, 100 * v / tot, n[k], k))
' "$tmp/profile.out" >"$tmp/profile.sum" 2>&1
    { echo; echo "== summary"; cat "$tmp/profile.sum"; } >>"$out/profile.txt"
    note profile "$(verdict $rc)" "$secs" "$(head -n 1 "$tmp/profile.sum" | cut -c1-80)"
else
    note profile "not run" 0 "ncu not found"
fi

ratio() { # ours theirs -> "1.23x" or n/a
    if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'
    else echo n/a; fi
}
{
    echo
    echo "==== shakeshake GPU check: ${gpu:-GPU unknown}; $((SECONDS - start))s of ${budget}s"
    printf '%-30s %-22s %6s  %s\n' step result time detail
    printf '%s\n' "${results[@]}"
    echo
    echo "26 2xWd, batch 128"
    printf '%-25s %-12s %9s %8s %-19s %8s %8s\n' benchmark result img/s ms/step \
        "s/epoch (est)" "GPU MiB" "alloc MB"
    printf '%s\n' "${bench_rows[@]}"
    echo "GPU MiB: memory in use by nvidia-smi, peak over before the run (context and"
    echo "caches included, the same measure for both); alloc MB: PyTorch's own peak in"
    echo "tensors. s/epoch: 50000 images trained and 10000 evaluated, from the per-batch"
    echo "times with every batch full (run: one such epoch, timed)."
    echo "epoch-*: sweep train's second epoch (img/s of training, s/epoch with evaluation);"
    echo "ours-*: bench_train through forward/backward/update calls from the host."
    for w in 32 96; do
        for p in bf16 fp32; do
            echo "speed 26 2x${w}d $p: shakeshake / PyTorch = training path" \
                "$(ratio "${ips[epoch-w$w-$p]:-}" "${ips[torch-w$w-$p]:-}"), per-call path" \
                "$(ratio "${ips[ours-w$w-$p]:-}" "${ips[torch-w$w-$p]:-}")"
        done
    done
    if [ "$status" = 0 ]; then
        echo "all checks passed"
    else
        echo "SOME CHECKS FAILED (full logs in $out), each one's last line:"
        printf '  %s\n' "${failures[@]}"
    fi
} | tee "$out/summary.txt"
exit "$status"
