"""An AlphaPose FastPose top-down network, exported to ONNX as AlphaPose's TensorRT
deployment starts from (seed 004).

FastPose is a ResNet backbone followed by DUC (dense upsampling convolution) blocks: a
3x3 convolution that multiplies the channels by four, then PixelShuffle(2) trading them
for resolution (ONNX DepthToSpace), and a 3x3 convolution to 17 heatmaps at 1/4 of the
input (3x256x192 -> 17x64x48). The input is the RGB crop scaled to [0, 1] (mean 0, std 1
after the division, as the seed says).

The weights are seeded random numbers: the graph is what a trained checkpoint exports,
the AP is not. Load your own with `--checkpoint` (a state dict of this module).

    python model.py --out fastpose.onnx [--size 256 192] [--width 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/seeds/seedlib.py
from seedlib import conv_bn_relu, export_onnx, seeded

JOINTS = 17


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand, projection skip."""

    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            conv_bn_relu(cin, mid, 1),
            conv_bn_relu(mid, mid, 3, stride),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class DUC(nn.Module):
    """Dense upsampling convolution: conv to 4x channels, then PixelShuffle(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv_bn_relu(cin, 4 * cout)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class FastPose(nn.Module):
    """ResNet-style backbone to 1/32, DUC x3 back to 1/4, 3x3 conv to 17 heatmaps."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn_relu(3, w, 7, 2), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], w
        for mid, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            layers.append(Bottleneck(cin, mid, stride))
            cin = 4 * mid
        self.backbone = nn.Sequential(*layers)
        self.shuffle1 = nn.PixelShuffle(2)  # AlphaPose: PixelShuffle right after the ResNet
        self.duc1 = DUC(cin // 4, 4 * w)
        self.duc2 = DUC(4 * w, 2 * w)
        self.head = nn.Conv2d(2 * w, JOINTS, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle1(self.backbone(self.stem(x)))
        return self.head(self.duc2(self.duc1(x)))


def export(net: nn.Module, size: tuple[int, int], path: str) -> None:
    """A fixed 1x3xHxW input (TensorRT builds a static engine), opset 13."""
    example = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    export_onnx(net, example, path, ["heatmaps"], opset=13)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--checkpoint", help="a state dict of FastPose to load")
    args = ap.parse_args()
    net = seeded(FastPose(args.width))
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    export(net, tuple(args.size), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
