"""PyTorch peer for bench/bench_train.c: the same network, the same work per
step (forward with per-image shake coefficients, cross-entropy, backward,
SGD with Nesterov momentum), float32 on the CPU, synthetic batches.

    /usr/bin/python3 bench/torch_bench.py [batch=128] [threads=2] [steps=5]
        [warmup=2] [depth=26] [width=32]

Prints one line in bench_train's key=value format.
"""
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_model import ShakeResNet  # noqa: E402


def main():
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    batch = int(args.get("batch", 128))
    threads = int(args.get("threads", 2))
    steps = int(args.get("steps", 5))
    warmup = int(args.get("warmup", 2))
    depth = int(args.get("depth", 26))
    width = int(args.get("width", 32))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = ShakeResNet(depth, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 10, (batch,))
    times = [0.0, 0.0]

    def step(timed):
        # one function scope per step, as a training loop usually has: the
        # step's tensors die with it, which keeps PyTorch's peak lowest
        for blk in model.blocks():
            blk.alpha = torch.rand(batch, 1, 1, 1)
            blk.beta = torch.rand(batch, 1, 1, 1)
        a = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        b = time.perf_counter()
        loss.backward()
        opt.step()
        if timed:
            times[0] += b - a
            times[1] += time.perf_counter() - b

    for _ in range(warmup):
        step(False)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(True)
    fwd, bwd = times
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("impl=pytorch-%s model=\"Shake-Shake ResNet %d 2x%dd\" batch=%d threads=%d "
          "img_per_s=%.1f ms_per_step=%.1f fwd_ms=%.1f bwd_ms=%.1f peak_rss_mb=%.0f"
          % (torch.__version__, depth, width, batch, threads, steps * batch / dt,
             1e3 * dt / steps, 1e3 * fwd / steps, 1e3 * bwd / steps, rss))


if __name__ == "__main__":
    main()
