"""An HRNet associative-embedding (bottom-up) pose network, exported to ONNX as mmpose's
`pytorch2onnx.py` does, the starting point of seeds 002 (VastAI vacc) and 003 (Ascend ATC).

The architecture keeps what matters for deployment: parallel branches at 1/4, 1/8 and
1/16 of the input that exchange features in every stage (strided 3x3 convolutions down,
1x1 convolution + nearest upsampling up, summed), and a final 1x1 layer giving 34 maps at
1/4: 17 keypoint heatmaps and 17 tag maps. H and W are free (the ATC "gear" model takes
several sizes with the short side 512), so the branches only meet again when H and W are
multiples of 16: the graph cannot run at 1x1.

The weights are seeded random numbers: the graph is what a trained checkpoint exports,
the AP is not. Load your own with `--checkpoint` (a state dict of this module).

    python model.py --out hrnet_ae.onnx [--channels 16] [--checkpoint ckpt.pth]
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


class Basic(nn.Module):
    """HRNet's BasicBlock: two 3x3 conv-bn layers and an identity skip."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(ch, ch), conv_bn_relu(ch, ch, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class Exchange(nn.Module):
    """One HRNet stage: a block per branch, then every branch receives every other's
    features (down: strided 3x3 convs, up: 1x1 conv + nearest upsampling)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList(Basic(w) for w in widths)
        self.fuse = nn.ModuleList()
        for i, wi in enumerate(widths):
            row = nn.ModuleList()
            for j, wj in enumerate(widths):
                if j > i:  # lower resolution -> up
                    row.append(conv_bn_relu(wj, wi, 1, relu=False))
                elif j < i:  # higher resolution -> down, one strided conv per halving
                    steps = [conv_bn_relu(wj, wj, 3, 2) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, conv_bn_relu(wj, wi, 3, 2, relu=False)))
                else:
                    row.append(nn.Identity())
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.blocks, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            acc = xs[i]
            for j, f in enumerate(row):
                if j > i:
                    acc = acc + F.interpolate(f(xs[j]), scale_factor=2.0 ** (j - i), mode="nearest")
                elif j < i:
                    acc = acc + f(xs[j])
            out.append(F.relu(acc))
        return out


class HRNetAE(nn.Module):
    """Stem to 1/4, three branches (1/4, 1/8, 1/16), two exchange stages, AE head."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(conv_bn_relu(3, c, 3, 2), conv_bn_relu(c, c, 3, 2))
        self.to8 = conv_bn_relu(c, 2 * c, 3, 2)
        self.to16 = conv_bn_relu(2 * c, 4 * c, 3, 2)
        self.stages = nn.ModuleList([Exchange([c, 2 * c, 4 * c]), Exchange([c, 2 * c, 4 * c])])
        self.head = nn.Conv2d(c, 2 * JOINTS, 1)  # 17 heatmaps + 17 tags

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = self.stem(x)
        x8 = self.to8(x4)
        xs = [x4, x8, self.to16(x8)]
        for stage in self.stages:
            xs = stage(xs)
        return self.head(xs[0])


def export(net: nn.Module, path: str) -> None:
    """opset 11, input 1x3xHxW with batch, height and width free (mmpose's
    pytorch2onnx with dynamic axes), output 1x34x(H/4)x(W/4)."""
    example = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}}
    export_onnx(net, example, path, ["output"], opset=11, dynamic_axes=axes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--checkpoint", help="a state dict of HRNetAE to load")
    args = ap.parse_args()
    net = seeded(HRNetAE(args.channels))
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    export(net, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
