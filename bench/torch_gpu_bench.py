"""PyTorch peer for bench_train's cuda backend: the same network
(scripts/torch_model.py), the same work per step (forward with per-image
shake coefficients, cross-entropy, backward, SGD with Nesterov momentum and
weight decay) and the same evaluation forward, in eager mode with
channels_last tensors, bf16 autocast (precision=bf16) or float32
(precision=fp32, TF32 off unless tf32=1), on synthetic CIFAR-shaped batches
already on the GPU.

    python3 bench/torch_gpu_bench.py [batch=128] [steps=50] [warmup=10]
        [depth=26] [width=32] [precision=bf16|fp32] [tf32=0|1]
        [train_images=50000] [test_images=10000] [device=cuda|cpu]

Prints one line in bench_train's key=value format: img_per_s and ms_per_step
of training, eval_ms per evaluation batch, epoch_s_est (an epoch of
train_images trained and test_images evaluated, estimated from those times
with every batch counted full, as bench_train does), peak_gpu_mb (the most
memory PyTorch's allocator held in tensors) and peak_reserved_mb (what it
held from the driver). device=cpu runs the same code on the CPU, a smoke
test of this script where there is no GPU; its times mean nothing.
"""
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_model import ShakeResNet  # noqa: E402

KEYS = ("batch", "steps", "warmup", "depth", "width", "precision", "tf32", "train_images",
        "test_images", "device")


def parse(argv):
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in KEYS:
            sys.exit("torch_gpu_bench: unknown argument %r (key=value, keys: %s)"
                     % (a, " ".join(KEYS)))
        args[key] = value
    return args


def main():
    args = parse(sys.argv[1:])
    batch = int(args.get("batch", 128))
    steps = int(args.get("steps", 50))
    warmup = int(args.get("warmup", 10))
    depth = int(args.get("depth", 26))
    width = int(args.get("width", 32))
    precision = args.get("precision", "bf16")
    tf32 = int(args.get("tf32", 0))
    train_images = int(args.get("train_images", 50000))
    test_images = int(args.get("test_images", 10000))
    dev = torch.device(args.get("device", "cuda"))
    if precision not in ("bf16", "fp32"):
        sys.exit("torch_gpu_bench: precision=%s: bf16 or fp32" % precision)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_gpu_bench: no GPU visible to PyTorch %s (device=cpu runs the "
                 "smoke test)" % torch.__version__)
    bf16 = precision == "bf16"
    cuda = dev.type == "cuda"
    if cuda:
        # fixed input shapes: let cuDNN pick its fastest algorithms (during warmup)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    torch.manual_seed(1)
    model = ShakeResNet(depth, width).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    x = (torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    # Coefficients in the activations' dtype: a float32 alpha would promote
    # every shake output, and the block outputs after it, to float32.
    coef_dtype = torch.bfloat16 if bf16 else torch.float32
    blocks = list(model.blocks())

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step():
        # one function scope per step, as a training loop usually has: the
        # step's tensors die with it, which keeps PyTorch's peak lowest
        for blk in blocks:
            blk.alpha = torch.rand(batch, 1, 1, 1, device=dev, dtype=coef_dtype)
            blk.beta = torch.rand(batch, 1, 1, 1, device=dev, dtype=coef_dtype)
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def eval_step():
        with torch.no_grad(), autocast():
            return model(x)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    model.train()
    for _ in range(warmup):
        train_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    step_s = (time.perf_counter() - t0) / steps

    model.eval()
    for blk in blocks:
        blk.alpha = blk.beta = None  # evaluation: both branches scaled by 0.5
    eval_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        eval_step()
    sync()
    eval_s = (time.perf_counter() - t0) / steps

    epoch_est = (math.ceil(train_images / batch) * step_s
                 + math.ceil(test_images / batch) * eval_s)
    if cuda:
        try:
            cudnn = torch.backends.cudnn.version()
        except RuntimeError:    # a cuDNN other than PyTorch's own was loaded
            cudnn = "mismatch"
        where = 'device=cuda gpu="%s" cudnn=%s' % (torch.cuda.get_device_name(dev), cudnn)
        mem = "peak_gpu_mb=%.0f peak_reserved_mb=%.0f" % (
            torch.cuda.max_memory_allocated(dev) / 2**20,
            torch.cuda.max_memory_reserved(dev) / 2**20)
    else:
        where = "device=cpu"
        mem = "peak_rss_mb=%.0f" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("impl=pytorch-%s model=\"Shake-Shake ResNet %d 2x%dd\" batch=%d precision=%s "
          "tf32=%d %s img_per_s=%.1f ms_per_step=%.2f eval_ms=%.2f epoch_s_est=%.2f %s"
          % (torch.__version__, depth, width, batch, precision, tf32, where, batch / step_s,
             1e3 * step_s, 1e3 * eval_s, epoch_est, mem))


if __name__ == "__main__":
    main()
