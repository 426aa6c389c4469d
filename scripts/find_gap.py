#!/usr/bin/env python3
"""How far cuDNN's heuristics' picks are from the fastest algorithms.

Usage: find_gap.py PICKS FOUND [BATCH]

PICKS: the stderr of a run with SHAKE_CUDA_VERBOSE=1 (one "cuda: KxK conv
... at batch N, P: forward algo A math M, backward data ..., backward
filter ..." line a convolution, in the backend's order). FOUND: the same
run with SHAKE_CUDA_FIND=1 as well, where each convolution's line follows
its "cuda: find: ..." lines, every candidate cuDNN timed. Both at batch
BATCH (default 128). Prints, for each direction summed over the
convolutions, the Find time of the heuristics' pick, of the fastest
deterministic candidate (what SHAKE_CUDA_FIND=1 runs: the backend keeps to
deterministic algorithms where there are any) and of the fastest of all;
then the convolutions where the pick loses the most.
"""
import re
import sys

DIRS = ("forward", "backward data", "backward filter")
CONV = re.compile(r"^cuda: (\d+x\d+ conv .*?) at batch (\d+), (\w+): forward algo (\d+) math (\d+), "
                  r"backward data (\d+) math (\d+), backward filter (\d+) math (\d+)")
FOUND = re.compile(r"^cuda: find: (\d+x\d+ conv .*?) at batch (\d+), (\w+), (forward|backward data|"
                   r"backward filter): algo (\d+) math (\d+), (?:([0-9.]+) ms, (\w+),)?")


def picks(path, batch):
    """[(conv, {direction: (algo, math)})] in order"""
    out = []
    for line in open(path, errors="replace"):
        m = CONV.match(line)
        if m and int(m.group(2)) == batch:
            v = [int(x) for x in m.groups()[3:]]
            out.append((m.group(1), {d: (v[2 * i], v[2 * i + 1]) for i, d in enumerate(DIRS)}))
    return out


def found(path, batch):
    """[(conv, {direction: [(algo, math, ms, deterministic)]})] in order"""
    out, cur = [], {}
    for line in open(path, errors="replace"):
        m = FOUND.match(line)
        if m:
            if int(m.group(2)) == batch and m.group(7):
                cur.setdefault(m.group(4), []).append(
                    (int(m.group(5)), int(m.group(6)), float(m.group(7)),
                     m.group(8) == "deterministic"))
            continue
        m = CONV.match(line)
        if m:
            if int(m.group(2)) == batch:
                out.append((m.group(1), cur))
            cur = {}
    return out


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[2])
    batch = int(sys.argv[3]) if len(sys.argv) == 4 else 128
    p, f = picks(sys.argv[1], batch), found(sys.argv[2], batch)
    if not p or not f:
        sys.exit("find_gap: no convolutions at batch %d in %s" %
                 (batch, sys.argv[1] if not p else sys.argv[2]))
    if [c for c, _ in p] != [c for c, _ in f]:
        sys.exit("find_gap: the two runs list different convolutions (%d and %d)" %
                 (len(p), len(f)))
    tot = {d: [0.0, 0.0, 0.0] for d in DIRS}
    missing, worst = 0, []
    for (conv, pk), (_, cands) in zip(p, f):
        for d in DIRS:
            cs = cands.get(d, [])
            if not cs:
                missing += 1
                continue
            best = min(c[2] for c in cs)
            det = [c[2] for c in cs if c[3]]
            best_det = min(det) if det else best
            mine = [c[2] for c in cs if (c[0], c[1]) == pk[d]]
            if not mine:
                missing += 1
                continue
            tot[d][0] += mine[0]
            tot[d][1] += best_det
            tot[d][2] += best
            worst.append((mine[0] - best_det, conv, d, pk[d], mine[0], best_det))
    print("cuDNN Find at batch %d, %d convolutions, ms summed (one pass of each):" % (batch, len(p)))
    print("%-16s %10s %14s %10s" % ("direction", "heuristics", "fastest det.", "fastest"))
    for d in DIRS:
        print("%-16s %10.3f %14.3f %10.3f" % (d, *tot[d]))
    print("%-16s %10.3f %14.3f %10.3f" % ("all", *(sum(t[i] for t in tot.values()) for i in range(3))))
    if missing:
        print("(%d picks had no time in the Find run: left out of the sums)" % missing)
    worst.sort(reverse=True)
    for gap, conv, d, (a, mt), mine, bd in worst[:8]:
        if gap <= 0:
            break
        print("  %+.3f ms  %s, %s: algo %d math %d %.3f ms, fastest deterministic %.3f ms" %
              (gap, conv, d, a, mt, mine, bd))


if __name__ == "__main__":
    main()
