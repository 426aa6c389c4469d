#!/usr/bin/env python3
"""Whether checkpoints hold the same tensors, bit for bit.

Usage: ckpt_same.py REFERENCE OTHER [OTHER ...]

Each file is a checkpoint as `sweep train` writes it (safetensors: an
8-byte little-endian header length, a JSON header, the tensors' bytes).
Compares every tensor of each OTHER with REFERENCE's (names, dtypes,
shapes and bytes; the metadata, which names the run's folder, is left
out). Prints one line a file and, where tensors differ, the first few with
their largest difference; exits 1 if any file differs.
"""
import json
import struct
import sys
from array import array


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    head = json.loads(raw[8:8 + n])
    head.pop("__metadata__", None)
    base = 8 + n
    return {k: (v["dtype"], v["shape"], raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in head.items()}


def largest_diff(dtype, a, b):
    if dtype != "F32" or len(a) != len(b):
        return float("nan")
    x, y = array("f"), array("f")
    x.frombytes(a)
    y.frombytes(b)
    return max(abs(p - q) for p, q in zip(x, y))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2])
    ref = load(sys.argv[1])
    bad = 0
    for path in sys.argv[2:]:
        other = load(path)
        if set(other) != set(ref):
            print("%s: other tensors than %s (%d against %d)" % (path, sys.argv[1], len(other),
                                                                 len(ref)))
            bad += 1
            continue
        diff = [k for k in sorted(ref) if ref[k] != other[k]]
        if not diff:
            print("%s: the same %d tensors as %s, bit for bit" % (path, len(ref), sys.argv[1]))
            continue
        bad += 1
        print("%s: %d of %d tensors differ from %s" % (path, len(diff), len(ref), sys.argv[1]))
        for k in diff[:5]:
            (dt, shape, a), (dt2, shape2, b) = ref[k], other[k]
            if (dt, shape) != (dt2, shape2):
                print("  %s: %s %s against %s %s" % (k, dt2, shape2, dt, shape))
            else:
                print("  %s: largest difference %.3g" % (k, largest_diff(dt, a, b)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
