"""The paper's networks in PyTorch, written from the engine's specification.

Used only by committed helper scripts: the benchmark peer (bench/torch_bench.py)
and the fixture generator (tests/fixtures/make_fixtures.py). The C engine never
needs Python. Tensor names match the engine's checkpoint names.
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class ShakeFn(torch.autograd.Function):
    """y = a*x1 + (1-a)*x2 forward; gradients b*g and (1-b)*g backward."""

    @staticmethod
    def forward(ctx, x1, x2, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx, g):
        (beta,) = ctx.saved_tensors
        return beta * g, (1 - beta) * g, None, None


def conv_init(m):
    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
    m.weight.data.normal_(0, math.sqrt(2.0 / n))


class Branch(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):  # x is already relu'd
        h = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(h))


class Shortcut(nn.Module):
    def __init__(self, cin, cout, stride, shift_original=True):
        super().__init__()
        self.stride = stride
        self.shift_original = shift_original
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):  # x is already relu'd
        s = self.stride
        p1 = F.avg_pool2d(x, 1, s)
        if self.shift_original:  # z[i][j] = x[i-1][j-1]
            z = F.pad(x[:, :, :-1, :-1], (1, 0, 1, 0))
        else:                    # z[i][j] = x[i+1][j+1]
            z = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        p2 = F.avg_pool2d(z, 1, s)
        return self.bn(torch.cat([self.conv1(p1), self.conv2(p2)], 1))


class ShakeBlock(nn.Module):
    def __init__(self, cin, cout, stride, shift_original=True):
        super().__init__()
        self.branch1 = Branch(cin, cout, stride)
        self.branch2 = Branch(cin, cout, stride)
        self.shortcut = None if cin == cout else Shortcut(cin, cout, stride, shift_original)
        self.alpha = None  # set from outside: tensor broadcastable to (N,1,1,1)
        self.beta = None

    def forward(self, x):
        r = F.relu(x)
        b1, b2 = self.branch1(r), self.branch2(r)
        sc = x if self.shortcut is None else self.shortcut(r)
        if self.alpha is None:
            a = torch.full((1, 1, 1, 1), 0.5, dtype=x.dtype, device=x.device)
            return sc + ShakeFn.apply(b1, b2, a, a)
        return sc + ShakeFn.apply(b1, b2, self.alpha, self.beta)


class Stem(nn.Module):
    def __init__(self, cin, cout, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y


class ShakeResNet(nn.Module):
    def __init__(self, depth=26, width=32, classes=10, in_ch=3, shift_original=True):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = Stem(in_ch, 16, relu=False)
        cin = 16
        for si, (w, s) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
            blocks = nn.Module()
            for b in range(n):
                setattr(blocks, "block%d" % b,
                        ShakeBlock(cin, w, s if b == 0 else 1, shift_original))
                cin = w
            setattr(self, "stage%d" % (si + 1), blocks)
        self.n = n
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def blocks(self):
        for si in range(1, 4):
            st = getattr(self, "stage%d" % si)
            for b in range(self.n):
                yield getattr(st, "block%d" % b)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks():
            h = blk(h)
        h = F.relu(h)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(h)


class ResNeXtBranch(nn.Module):
    """conv1x1 -> BN -> ReLU -> grouped conv3x3 (stride s) -> BN -> ReLU -> conv1x1 -> BN."""

    def __init__(self, cin, inner, cout, stride, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(h))


class ResNeXtShortcut(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class ShakeResNeXtBlock(nn.Module):
    """Post-activation: y = relu(shortcut(x) + shake(branch1(x), branch2(x)))."""

    def __init__(self, cin, inner, cout, stride, groups):
        super().__init__()
        self.branch1 = ResNeXtBranch(cin, inner, cout, stride, groups)
        self.branch2 = ResNeXtBranch(cin, inner, cout, stride, groups)
        self.shortcut = (None if cin == cout and stride == 1
                         else ResNeXtShortcut(cin, cout, stride))
        self.alpha = None  # as ShakeBlock
        self.beta = None

    def forward(self, x):
        b1, b2 = self.branch1(x), self.branch2(x)
        sc = x if self.shortcut is None else self.shortcut(x)
        if self.alpha is None:
            a = torch.full((1, 1, 1, 1), 0.5, dtype=x.dtype, device=x.device)
            return F.relu(sc + ShakeFn.apply(b1, b2, a, a))
        return F.relu(sc + ShakeFn.apply(b1, b2, self.alpha, self.beta))


class ShakeResNeXt(nn.Module):
    """depth 9n+2; stage s has 4*base_s output channels and groups *
    (base_s * width / 64) inner channels, base = 64, 128, 256; the stem is
    64 wide and, unlike the ResNet's, ends with a ReLU."""

    def __init__(self, depth=29, width=64, groups=4, classes=100, in_ch=3):
        super().__init__()
        n = (depth - 2) // 9
        self.stem = Stem(in_ch, 64, relu=True)
        cin = 64
        for si, (base, s) in enumerate([(64, 1), (128, 2), (256, 2)]):
            inner = groups * (base * width // 64)
            blocks = nn.Module()
            for b in range(n):
                setattr(blocks, "block%d" % b,
                        ShakeResNeXtBlock(cin, inner, 4 * base, s if b == 0 else 1, groups))
                cin = 4 * base
            setattr(self, "stage%d" % (si + 1), blocks)
        self.n = n
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def blocks(self):
        for si in range(1, 4):
            st = getattr(self, "stage%d" % si)
            for b in range(self.n):
                yield getattr(st, "block%d" % b)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks():
            h = blk(h)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(h)


if __name__ == "__main__":
    for w in (32, 64, 96, 112):
        m = ShakeResNet(26, w)
        print("26 2x%dd" % w, sum(p.numel() for p in m.parameters()))
    m = ShakeResNeXt(29, 64, 4, 100)
    print("29 2x4x64d", sum(p.numel() for p in m.parameters()))
