"""Full-size top-down pose architectures with seeded random weights, as ONNX + spec.

For measuring how calibration scales to the models users bring (benchmarks/large_pose.py),
not accuracy: HRNet-W32 (mmpose td-hm_hrnet-w32 256x192, 293 Convs), SimpleBaseline
ResNet-50 (3 deconvs, 57 weighted layers), a 2-stack hourglass (256 features, depth 4,
102 Convs), AlphaPose's FastPose (ResNet-50, PixelShuffle and two DUC heads), ViTPose-S (12 transformer blocks: MatMul, LayerNormalization, Softmax, two
deconvs), RTMPose-S (CSPNeXt with depthwise 5x5 convs and SiLU, a gated attention unit,
two SimCC Linear classifiers; decoded with `type: simcc`), an RLE regression ResNet-50
(global pooling and one Linear; `type: regression-xy`) and Lite-HRNet-18 (270 Convs,
most depthwise or 1x1: channel split and shuffle, cross-resolution and spatial sigmoid
weighting). Weights are kaiming-initialized
(Linear: truncated normal 0.02), BatchNorm statistics gathered on N(0,1) batches, then
every BatchNorm folded into its Conv / ConvTranspose before export, as mmpose's exports of
trained checkpoints look. Needs torch (`pip install torch`).

    python benchmarks/pose_zoo.py OUT_DIR [--only hrnet_w32 ...] [--dynamic]
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

NUM_JOINTS = 17
SEED = 0


class ConvBN(nn.Module):
    """Conv (or ConvTranspose) + BatchNorm (+ ReLU); `fuse()` folds the BN into the conv."""

    def __init__(
        self,
        cin,
        cout,
        k,
        stride=1,
        padding=None,
        relu=True,
        bias=False,
        transpose=False,
        output_padding=0,
        groups=1,
    ):
        super().__init__()
        if padding is None:
            padding = k // 2
        self.transpose = transpose
        if transpose:
            self.conv = nn.ConvTranspose2d(
                cin, cout, k, stride, padding, output_padding=output_padding, bias=bias
            )
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=bias, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def fuse(self):
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(
                self.conv.eval(), self.bn.eval(), transpose=self.transpose
            )
            self.bn = nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = ConvBN(cin, planes, 3, stride)
        self.conv2 = ConvBN(planes, planes, 3, relu=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + idt)


class Bottleneck(nn.Module):
    """ResNet v1.5 / mmpose 'pytorch' style bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, expansion=None):
        super().__init__()
        exp = expansion or self.expansion
        self.conv1 = ConvBN(cin, planes, 1)
        self.conv2 = ConvBN(planes, planes, 3, stride)
        self.conv3 = ConvBN(planes, planes * exp, 1, relu=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + idt)


def make_layer(block, cin, planes, blocks, stride=1, expansion=None):
    exp = expansion or block.expansion
    down = None
    if stride != 1 or cin != planes * exp:
        down = ConvBN(cin, planes * exp, 1, stride, relu=False)
    kw = {} if expansion is None else {"expansion": expansion}
    layers = [block(cin, planes, stride, down, **kw)]
    layers += [block(planes * exp, planes, **kw) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- HRNet-W32


def fuse_layers(channels, multiscale_output, down):
    """HRNet's fuse layers: row i sums every branch j at branch i's resolution, a lower one
    through a 1x1 conv + BN and nearest upsampling, a higher one through (i - j) strided
    steps `down(cin, cout, last)`."""
    n = len(channels)
    layers = nn.ModuleList()
    for i in range(n if multiscale_output else 1):
        row = nn.ModuleList()
        for j in range(n):
            if j > i:
                row.append(
                    nn.Sequential(
                        ConvBN(channels[j], channels[i], 1, relu=False),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    )
                )
            elif j == i:
                row.append(nn.Identity())
            else:
                steps = []
                for k in range(i - j):
                    last = k == i - j - 1
                    steps.append(down(channels[j], channels[i] if last else channels[j], last))
                row.append(nn.Sequential(*steps))
        layers.append(row)
    return layers


def fuse(layers, xs, relu):
    out = []
    for row in layers:
        y = row[0](xs[0])
        for j in range(1, len(xs)):
            y = y + row[j](xs[j])
        out.append(relu(y))
    return out


class HRModule(nn.Module):
    """mmpose HRModule: parallel branches of BasicBlocks, then the fuse layers (strided
    3x3 convs down)."""

    def __init__(self, channels, num_blocks, multiscale_output=True):
        super().__init__()
        self.branches = nn.ModuleList(
            make_layer(BasicBlock, c, c, b) for c, b in zip(channels, num_blocks)
        )
        self.fuse_layers = nn.ModuleList()
        if len(channels) == 1:
            return

        def down(cin, cout, last):
            return ConvBN(cin, cout, 3, 2, relu=not last)

        self.fuse_layers = fuse_layers(channels, multiscale_output, down)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs):
        xs = [b(x) for b, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        return fuse(self.fuse_layers, xs, self.relu)


def make_transition(pre, cur):
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(ConvBN(pre[i], c, 3) if pre[i] != c else None)
        else:
            convs = []
            for k in range(i + 1 - len(pre)):
                cin = pre[-1]
                cout = c if k == i - len(pre) else cin
                convs.append(ConvBN(cin, cout, 3, 2))
            layers.append(nn.Sequential(*convs))
    return layers


class HRNetW32(nn.Module):
    def __init__(self, width=32, joints=NUM_JOINTS):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 64, 3, 2), ConvBN(64, 64, 3, 2))
        self.layer1 = make_layer(Bottleneck, 64, 64, 4)  # 64 -> 256
        c2 = [width, width * 2]
        c3 = c2 + [width * 4]
        c4 = c3 + [width * 8]
        self.transition1 = make_transition([256], c2)
        self.stage2 = nn.ModuleList([HRModule(c2, [4] * 2)])
        self.transition2 = make_transition(c2, c3)
        self.stage3 = nn.ModuleList(HRModule(c3, [4] * 3) for _ in range(4))
        self.transition3 = make_transition(c3, c4)
        # mmpose: stage4 multiscale_output=False -> the last module only fuses into branch 0
        self.stage4 = nn.ModuleList(
            HRModule(c4, [4] * 4, multiscale_output=(m < 2)) for m in range(3)
        )
        self.final = nn.Conv2d(width, joints, 1)

    @staticmethod
    def _transit(trans, ys):
        out = []
        for i, t in enumerate(trans):
            if t is None:
                out.append(ys[i])
            else:
                out.append(t(ys[i] if i < len(ys) else ys[-1]))
        return out

    def forward(self, x):
        x = self.layer1(self.stem(x))
        ys = self._transit(self.transition1, [x])
        for m in self.stage2:
            ys = m(ys)
        ys = self._transit(self.transition2, ys)
        for m in self.stage3:
            ys = m(ys)
        ys = self._transit(self.transition3, ys)
        for m in self.stage4:
            ys = m(ys)
        return self.final(ys[0])


# ----------------------------------------------------------------------------- SimpleBaseline R50


class SimpleBaselineR50(nn.Module):
    def __init__(self, joints=NUM_JOINTS):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.layer1 = make_layer(Bottleneck, 64, 64, 3)
        self.layer2 = make_layer(Bottleneck, 256, 128, 4, 2)
        self.layer3 = make_layer(Bottleneck, 512, 256, 6, 2)
        self.layer4 = make_layer(Bottleneck, 1024, 512, 3, 2)
        self.deconv = nn.Sequential(
            ConvBN(2048, 256, 4, 2, 1, transpose=True),
            ConvBN(256, 256, 4, 2, 1, transpose=True),
            ConvBN(256, 256, 4, 2, 1, transpose=True),
        )
        self.final = nn.Conv2d(256, joints, 1)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.final(self.deconv(x))


class RLEResNet50(SimpleBaselineR50):
    """mmpose td-reg_res50_rle 256x192: the ResNet-50 backbone, global average pooling and
    one Linear to (x, y, sigma_x, sigma_y) per joint (RLEHead; sigma raw, as exported);
    decoded with `type: regression-xy`."""

    def __init__(self, joints=NUM_JOINTS):
        super().__init__(joints)
        del self.deconv, self.final
        self.joints = joints
        self.fc = nn.Linear(2048, joints * 4)

    def features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self.fc(self.features(x)).reshape(-1, self.joints, 4)

    @torch.no_grad()
    def fit_head(self, hw):
        """Coordinates inside the crop, as a trained head gives: fc scaled so that on
                random inputs they spread 0.1 around 0.5 (random weights would put them tens of
                crop sizes away, where any int8 error is hundreds of pixels). The inputs are smooth
        noise: features of N(0, 1) pixels are an order of magnitude weaker than of images."""
        g = torch.Generator().manual_seed(SEED + 3)
        smooth = torch.randn(8, 3, hw[0] // 16, hw[1] // 16, generator=g)  # image-like:
        out = self.fc(self.features(F.interpolate(smooth, size=hw, mode="bilinear")))
        self.fc.weight.mul_(0.1 / out.std())
        self.fc.bias.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0]).repeat(self.joints))


# ----------------------------------------------------------------------------- Stacked hourglass


class HGBottleneck(Bottleneck):
    """Newell's residual module (expansion 2: 256 -> 128 -> 128 -> 256), post-activation
    (conv-BN-ReLU) so the BN folds into the conv; the original is pre-activation."""

    expansion = 2


class Hourglass(nn.Module):
    def __init__(self, depth=4, ch=256, num_blocks=1):
        super().__init__()
        self.depth = depth

        def res():
            return make_layer(HGBottleneck, ch, ch // 2, num_blocks)

        # level n (1..depth): [up1, low1, low3] (+ low2 at the innermost level)
        self.levels = nn.ModuleList(
            nn.ModuleList([res(), res(), res()] + ([res()] if n == 1 else []))
            for n in range(1, depth + 1)
        )

    def _fwd(self, n, x):
        lv = self.levels[n - 1]
        up1 = lv[0](x)
        low1 = lv[1](F.max_pool2d(x, 2, 2))
        low2 = self._fwd(n - 1, low1) if n > 1 else lv[3](low1)
        low3 = lv[2](low2)
        return up1 + F.interpolate(low3, scale_factor=2, mode="nearest")

    def forward(self, x):
        return self._fwd(self.depth, x)


class StackedHourglass(nn.Module):
    def __init__(self, stacks=2, ch=256, depth=4, joints=NUM_JOINTS, num_blocks=1):
        super().__init__()
        self.stacks = stacks
        self.stem = nn.Sequential(ConvBN(3, 64, 7, 2, bias=True))
        self.layer1 = make_layer(HGBottleneck, 64, 64, 1)  # 64 -> 128
        self.pool = nn.MaxPool2d(2, 2)
        self.layer2 = make_layer(HGBottleneck, 128, 128, 1)  # 128 -> 256
        self.layer3 = make_layer(HGBottleneck, 256, ch // 2, 1)  # 256 -> 256
        self.hg = nn.ModuleList(Hourglass(depth, ch, num_blocks) for _ in range(stacks))
        self.res = nn.ModuleList(
            make_layer(HGBottleneck, ch, ch // 2, num_blocks) for _ in range(stacks)
        )
        self.fc = nn.ModuleList(ConvBN(ch, ch, 1, bias=True) for _ in range(stacks))
        self.score = nn.ModuleList(nn.Conv2d(ch, joints, 1) for _ in range(stacks))
        self.fc_ = nn.ModuleList(nn.Conv2d(ch, ch, 1) for _ in range(stacks - 1))
        self.score_ = nn.ModuleList(nn.Conv2d(joints, ch, 1) for _ in range(stacks - 1))

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = self.layer3(self.layer2(self.pool(x)))
        score = None
        for i in range(self.stacks):
            y = self.fc[i](self.res[i](self.hg[i](x)))
            score = self.score[i](y)  # intermediate supervision head
            if i < self.stacks - 1:
                x = x + self.fc_[i](y) + self.score_[i](score)
        return score  # only the last stack's heatmaps are exported


# ----------------------------------------------------------------------------- AlphaPose FastPose


class DUC(nn.Module):
    """AlphaPose's dense upsampling convolution: 3x3 conv + BN + ReLU, then PixelShuffle."""

    def __init__(self, cin, cout, factor=2):
        super().__init__()
        self.conv = ConvBN(cin, cout, 3)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x):
        return self.shuffle(self.conv(x))


class FastPoseR50(nn.Module):
    """AlphaPose FastPose (ResNet-50, 256x192): the backbone's 2048 channels pixel-shuffled
    to 512, two DUCs (512 -> 1024 -> 256, 256 -> 512 -> 128), a 3x3 conv to the joints."""

    def __init__(self, joints=NUM_JOINTS):
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBN(3, 64, 7, 2),
            nn.MaxPool2d(3, 2, 1),
            make_layer(Bottleneck, 64, 64, 3),
            make_layer(Bottleneck, 256, 128, 4, 2),
            make_layer(Bottleneck, 512, 256, 6, 2),
            make_layer(Bottleneck, 1024, 512, 3, 2),
        )
        self.shuffle = nn.PixelShuffle(2)
        self.duc1, self.duc2 = DUC(512, 1024), DUC(256, 512)
        self.conv_out = nn.Conv2d(128, joints, 3, padding=1)

    def forward(self, x):
        return self.conv_out(self.duc2(self.duc1(self.shuffle(self.backbone(x)))))


# ----------------------------------------------------------------------------- ViTPose-S


class ViTBlock(nn.Module):
    """Pre-norm transformer block (timm / mmpretrain ViT): LN, multi-head attention, LN, MLP."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTPoseS(nn.Module):
    """ViTPose-S (mmpose td-hm_ViTPose-small 256x192): 16x16 patches, 12 blocks of 384,
    the classic decoder (two 4x4 stride-2 deconvs of 256, then a 1x1 conv)."""

    def __init__(self, dim=384, depth=12, heads=6, joints=NUM_JOINTS, hw=(256, 192)):
        super().__init__()
        self.grid = (hw[0] // 16, hw[1] // 16)
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.deconv = nn.Sequential(
            ConvBN(dim, 256, 4, 2, 1, transpose=True), ConvBN(256, 256, 4, 2, 1, transpose=True)
        )
        self.final = nn.Conv2d(256, joints, 1)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.final(self.deconv(x))


# ----------------------------------------------------------------------------- RTMPose-S


class ConvBNSiLU(ConvBN):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(cin, cout, k, stride)
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.relu = nn.SiLU()


class CSPNeXtBlock(nn.Module):
    """3x3 conv, then a 5x5 depthwise-separable conv, plus the input."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = ConvBNSiLU(ch, ch, 3)
        self.dw = ConvBNSiLU(ch, ch, 5, groups=ch)
        self.pw = ConvBNSiLU(ch, ch, 1)

    def forward(self, x):
        return x + self.pw(self.dw(self.conv1(x)))


class CSPLayer(nn.Module):
    """mmdet CSPLayer as in CSPNeXt: two 1x1 branches, blocks on one, concatenated,
    channel attention (global pool, 1x1 conv, hard sigmoid), a final 1x1."""

    def __init__(self, cin, cout, blocks):
        super().__init__()
        mid = cout // 2
        self.main, self.short = ConvBNSiLU(cin, mid, 1), ConvBNSiLU(cin, mid, 1)
        self.blocks = nn.Sequential(*(CSPNeXtBlock(mid) for _ in range(blocks)))
        self.attention = nn.Conv2d(2 * mid, 2 * mid, 1)
        self.final = ConvBNSiLU(2 * mid, cout, 1)

    def forward(self, x):
        y = torch.cat([self.blocks(self.main(x)), self.short(x)], dim=1)
        y = y * F.hardsigmoid(self.attention(y.mean(dim=(2, 3), keepdim=True)))
        return self.final(y)


class ScaleNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale, self.g = dim**-0.5, nn.Parameter(torch.ones(1))

    def forward(self, x):
        norm = torch.linalg.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=1e-5) * self.g


class GAU(nn.Module):
    """RTMCCBlock (gated attention unit): one Linear to u, v and a shared base for q and
    k, a squared-ReLU kernel over the joints, gated output, residual."""

    def __init__(self, dim, s=128, expansion=2):
        super().__init__()
        self.e, self.s = dim * expansion, s
        self.norm = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.randn(2, s) * 0.02 + 1)
        self.beta = nn.Parameter(torch.zeros(2, s))
        self.o = nn.Linear(self.e, dim, bias=False)

    def forward(self, x):
        u, v, base = torch.split(F.silu(self.uv(self.norm(x))), [self.e, self.e, self.s], -1)
        q, k = (base.unsqueeze(-2) * self.gamma + self.beta).unbind(-2)
        kernel = F.relu(q @ k.transpose(-2, -1) / self.s**0.5) ** 2
        return x + self.o(u * (kernel @ v))


class RTMPoseS(nn.Module):
    """RTMPose-S (mmpose rtmpose-s 256x192): a CSPNeXt backbone (widen 0.5, deepen 0.33),
    the RTMCC head (7x7 conv to joints, flattened, Linear to 256, GAU) and two SimCC
    classifiers of 2x the input width and height."""

    def __init__(self, joints=NUM_JOINTS, hw=(256, 192), ratio=2):
        super().__init__()
        self.stem = nn.Sequential(
            ConvBNSiLU(3, 16, 3, 2), ConvBNSiLU(16, 16, 3), ConvBNSiLU(16, 32, 3)
        )
        stages = []
        for cin, cout, n in ((32, 64, 1), (64, 128, 1), (128, 256, 1), (256, 512, 1)):
            stages += [ConvBNSiLU(cin, cout, 3, 2), CSPLayer(cout, cout, n)]
        self.stages = nn.Sequential(*stages)
        self.final = nn.Conv2d(512, joints, 7, padding=3)
        cells = (hw[0] // 32) * (hw[1] // 32)
        self.mlp = nn.Sequential(ScaleNorm(cells), nn.Linear(cells, 256, bias=False))
        self.gau = GAU(256)
        self.cls_x = nn.Linear(256, hw[1] * ratio, bias=False)
        self.cls_y = nn.Linear(256, hw[0] * ratio, bias=False)

    def forward(self, x):
        x = self.final(self.stages(self.stem(x))).flatten(2)
        x = self.gau(self.mlp(x))
        return self.cls_x(x), self.cls_y(x)


# ----------------------------------------------------------------------------- init / calibrate / export

# ----------------------------------------------------------------------------- Lite-HRNet-18


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


def dw_separable(cin, cout, stride, relu_last=True):
    """3x3 depthwise conv + BN, then 1x1 conv + BN (+ ReLU): Lite-HRNet's downsampling."""
    return nn.Sequential(
        ConvBN(cin, cin, 3, stride, relu=False, groups=cin), ConvBN(cin, cout, 1, relu=relu_last)
    )


class LiteStem(nn.Module):
    """mmpose LiteHRNet Stem: 3x3 s2 conv, then a shuffle block that halves the size again."""

    def __init__(self, cin=3, cout=32):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, 2)
        half = cout // 2
        self.branch1 = dw_separable(half, half, 2)
        self.expand = ConvBN(half, cout, 1)
        self.depthwise = ConvBN(cout, cout, 3, 2, relu=False, groups=cout)
        self.linear = ConvBN(cout, half, 1)

    def forward(self, x):
        x = self.conv1(x)
        x1, x2 = x.chunk(2, dim=1)
        x2 = self.linear(self.depthwise(self.expand(x2)))
        return channel_shuffle(torch.cat([self.branch1(x1), x2], dim=1), 2)


class ConditionalChannelWeighting(nn.Module):
    """Half of each branch's channels: cross-resolution weights (every branch pooled to the
    smallest, 1x1 convs, sigmoid, nearest upsampling back), a 3x3 depthwise conv, spatial
    weights (global pool, 1x1 convs, sigmoid); concatenated with the other half, shuffled."""

    def __init__(self, channels, reduce_ratio=8):
        super().__init__()
        half = [c // 2 for c in channels]
        total = sum(half)
        self.crw1 = nn.Conv2d(total, total // reduce_ratio, 1)
        self.crw2 = nn.Conv2d(total // reduce_ratio, total, 1)
        self.dw = nn.ModuleList(ConvBN(c, c, 3, relu=False, groups=c) for c in half)
        self.sw = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c, c // 4, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c // 4, c, 1),
                nn.Sigmoid(),
            )
            for c in half
        )
        self.half = half

    def forward(self, xs):
        parts = [x.chunk(2, dim=1) for x in xs]
        x1, x2 = [p[0] for p in parts], [p[1] for p in parts]
        mini = x2[-1].shape[-2:]
        pooled = [F.adaptive_avg_pool2d(s, mini) for s in x2[:-1]] + [x2[-1]]
        w = torch.sigmoid(self.crw2(F.relu(self.crw1(torch.cat(pooled, dim=1)))))
        weights = torch.split(w, self.half, dim=1)
        x2 = [s * F.interpolate(a, size=s.shape[-2:], mode="nearest") for s, a in zip(x2, weights)]
        x2 = [dw(s) for dw, s in zip(self.dw, x2)]
        x2 = [s * sw(s) for sw, s in zip(self.sw, x2)]
        return [channel_shuffle(torch.cat([a, b], dim=1), 2) for a, b in zip(x1, x2)]


class LiteHRModule(nn.Module):
    """Two conditional channel weighting blocks, then HRNet's fuse layers (depthwise-
    separable strided convs down)."""

    def __init__(self, channels, blocks=2, multiscale_output=True):
        super().__init__()
        self.blocks = nn.Sequential(*(ConditionalChannelWeighting(channels) for _ in range(blocks)))

        def down(cin, cout, last):
            return dw_separable(cin, cout, 2, relu_last=not last)

        self.fuse_layers = fuse_layers(channels, multiscale_output, down)

    def forward(self, xs):
        return fuse(self.fuse_layers, self.blocks(xs), F.relu)


class LiteHRNet18(nn.Module):
    """Lite-HRNet-18 (mmpose td-hm_litehrnet-18 256x192): stem, 3 stages of 2 / 4 / 2
    modules over 2 / 3 / 4 branches of (40, 80, 160, 320) channels, the heatmaps from the
    highest-resolution branch by a 1x1 conv."""

    def __init__(self, joints=NUM_JOINTS):
        super().__init__()
        self.stem = LiteStem(3, 32)
        widths = [40, 80, 160, 320]
        pre, stages = [32], []
        for n, modules in ((2, 2), (3, 4), (4, 2)):
            cur = widths[:n]
            trans = nn.ModuleList()
            for i, c in enumerate(cur):
                if i < len(pre):
                    trans.append(dw_separable(pre[i], c, 1) if pre[i] != c else nn.Identity())
                else:
                    trans.append(dw_separable(pre[-1], c, 2))
            last = n == 4
            mods = [
                LiteHRModule(cur, multiscale_output=not (last and m == modules - 1))
                for m in range(modules)
            ]
            stages.append(nn.ModuleList([trans, nn.ModuleList(mods)]))
            pre = cur
        self.stages = nn.ModuleList(stages)
        self.final = nn.Conv2d(widths[0], joints, 1)

    def forward(self, x):
        ys = [self.stem(x)]
        for trans, mods in self.stages:
            ys = [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(trans)]
            for m in mods:
                ys = m(ys)
        return self.final(ys[0])


MODELS = {
    # name: (factory, input (H, W), description)
    "hrnet_w32": (HRNetW32, (256, 192), "HRNet-W32 top-down (mmpose td-hm_hrnet-w32 256x192)"),
    "simplebaseline_r50": (SimpleBaselineR50, (256, 192), "SimpleBaseline ResNet-50, 3 deconvs"),
    "rle_r50": (RLEResNet50, (256, 192), "RLE regression, ResNet-50 (mmpose td-reg_res50_rle)"),
    "hourglass2": (StackedHourglass, (256, 256), "stacked hourglass, 2 stacks, 256 features"),
    "fastpose_r50": (FastPoseR50, (256, 192), "AlphaPose FastPose ResNet-50 with DUC heads"),
    "vitpose_s": (ViTPoseS, (256, 192), "ViTPose-S top-down (mmpose td-hm_ViTPose-small 256x192)"),
    "litehrnet_18": (
        LiteHRNet18,
        (256, 192),
        "Lite-HRNet-18 top-down (mmpose td-hm_litehrnet-18 256x192)",
    ),
    "rtmpose_s": (
        RTMPoseS,
        (256, 192),
        "RTMPose-S top-down, SimCC head (mmpose rtmpose-s 256x192)",
    ),
}
# the decode section of each architecture's spec, and its ONNX output names
HEATMAP = ('  type: heatmap\n  layout: NCHW\n  output: "heatmaps"\n', ["heatmaps"])
DECODE = {
    "rtmpose_s": ('  type: simcc\n  x: "simcc_x"\n  y: "simcc_y"\n', ["simcc_x", "simcc_y"]),
    "rle_r50": ('  type: regression-xy\n  output: "coords"\n', ["coords"]),
}


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def gather_bn_statistics(model: nn.Module, hw: tuple[int, int], passes: int = 4) -> None:
    """BatchNorm running statistics from a few random batches (cumulative average)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    g = torch.Generator().manual_seed(SEED + 1)
    for _ in range(passes):
        model(torch.randn(8, 3, *hw, generator=g))
    model.eval()


def fold_batchnorms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.fuse()
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert left == 0, f"{left} BatchNorm2d left unfolded"


SPEC = """\
# {desc} ({name}.onnx), seeded random weights: for time and memory, not accuracy.
input:
  name: "input"
  size: [{h}, {w}]
  layout: NCHW
  dtype: float32
  color: RGB
  mean: [123.675, 116.28, 103.53]
  std: [58.395, 57.12, 57.375]
  pad_value: 0
source:
  type: coco-topdown
  ann: "${{GRAPHKIT_ASSETS}}/coco-mini/annotations/person_keypoints_train2017.json"
  images: "${{GRAPHKIT_ASSETS}}/coco-mini/train2017"
  padding: 1.25
decode:
{decode}"""


def build(name: str, out_dir: Path, dynamic: bool = False) -> tuple[Path, Path]:
    """(model.onnx, spec.yaml) of one architecture in `out_dir`; dynamic=True exports
    batch, height and width symbolic (mmdeploy's dynamic configs) as `<name>_dyn`."""
    import onnx

    factory, hw, desc = MODELS[name]
    torch.manual_seed(SEED)
    model = factory()
    init_weights(model)
    gather_bn_statistics(model, hw)
    fold_batchnorms(model)
    if hasattr(model, "fit_head"):
        model.fit_head(hw)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(SEED + 2))
    decode, outputs = DECODE.get(name, HEATMAP)
    options = {"opset_version": 17, "input_names": ["input"], "output_names": outputs}
    if dynamic:
        axes = {"input": {0: "batch", 2: "height", 3: "width"}}
        options["dynamic_axes"] = axes | {o: {0: "batch"} for o in outputs}
        name = f"{name}_dyn"
    path = out_dir / f"{name}.onnx"
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    torch.onnx.export(model, (x,), str(path), do_constant_folding=True, **options)
    exported = onnx.load(str(path))
    exported.ir_version = min(exported.ir_version, 9)
    onnx.checker.check_model(exported)
    onnx.save(exported, str(path))
    spec = out_dir / f"{name}.yaml"
    spec.write_text(SPEC.format(desc=desc, name=name, h=hw[0], w=hw[1], decode=decode))
    return path, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="default: all")
    ap.add_argument(
        "--dynamic", action="store_true", help="batch, height and width symbolic (NAME_dyn)"
    )
    args = ap.parse_args()
    for name in args.only or list(MODELS):
        path, spec = build(name, args.out_dir, args.dynamic)
        print(f"{name}: {path}, {spec}")


if __name__ == "__main__":
    main()
