"""An mmpose-style Hourglass top-down pose network, exported to ONNX with the flip test
in the graph, as seeds 000/001 start from (mmpose HourglassNet + TopdownHeatmapMultiStageHead,
converted through mmdeploy).

The architecture follows mmpose's: a strided stem, stacked recursive hourglasses built
from residual blocks (max-pool down, bilinear upsample up, skip adds), a 1x1 heatmap head
per stack (the list of per-stage heatmaps; inference keeps the last) and the features fed
to the next stack. `--flip-test` wraps it the way mmpose's test-time flip does: the image
and its mirror run through the same network, the mirrored heatmaps are flipped back, left
and right joints swapped, shifted one pixel (`shift_heatmap`) and averaged.

The weights are seeded random numbers (BatchNorm with non-trivial statistics): the graph
is what a trained checkpoint exports, the AP is not. Load your own with `--checkpoint`
(a state dict of this module).

    python model.py --out hourglass_flip.onnx [--size 256 192] [--channels 64] [--flip-test]
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
COCO_FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


class Residual(nn.Module):
    """mmpose's hourglass residual unit: two conv-bn(-relu) layers and an identity skip."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class Hourglass(nn.Module):
    """Recursive: skip branch + (max-pool, residual, inner hourglass, residual, upsample)."""

    def __init__(self, depth: int, ch: int):
        super().__init__()
        self.up1 = Residual(ch)
        self.low1 = Residual(ch)
        self.low2 = Hourglass(depth - 1, ch) if depth > 1 else Residual(ch)
        self.low3 = Residual(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        up = F.interpolate(low, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.up1(x) + up


class HourglassNet(nn.Module):
    """Stacked hourglasses; returns the per-stack heatmaps at 1/4 of the input."""

    def __init__(self, channels: int = 64, stacks: int = 2, depth: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn_relu(3, channels, 7, 2), Residual(channels), nn.MaxPool2d(2), Residual(channels)
        )
        self.hgs = nn.ModuleList(Hourglass(depth, channels) for _ in range(stacks))
        self.feats = nn.ModuleList(conv_bn_relu(channels, channels, 1) for _ in range(stacks))
        self.heads = nn.ModuleList(nn.Conv2d(channels, JOINTS, 1) for _ in range(stacks))
        self.merge_feat = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(stacks - 1))
        self.merge_heat = nn.ModuleList(nn.Conv2d(JOINTS, channels, 1) for _ in range(stacks - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, (hg, feat, head) in enumerate(zip(self.hgs, self.feats, self.heads)):
            f = feat(hg(x))
            heat = head(f)
            outs.append(heat)
            if i < len(self.merge_feat):
                x = x + self.merge_feat[i](f) + self.merge_heat[i](heat)
        return outs


class FlipTest(nn.Module):
    """mmpose's test-time flip around a multi-stage network, on every stage output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        perm = list(range(JOINTS))
        for a, b in COCO_FLIP_PAIRS:
            perm[a], perm[b] = b, a
        self.register_buffer("perm", torch.tensor(perm))

    def _back(self, heat: torch.Tensor) -> torch.Tensor:
        heat = torch.flip(heat, [3])[:, self.perm]
        return torch.cat([heat[:, :, :, :1], heat[:, :, :, :-1]], dim=3)  # shift_heatmap

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        plain = self.net(x)
        mirrored = self.net(torch.flip(x, [3]))
        return [(p + self._back(m)) * 0.5 for p, m in zip(plain, mirrored)]


def export(net: nn.Module, size: tuple[int, int], path: str) -> None:
    """As mmdeploy's pytorch2onnx exports: opset 11, one 1x3xHxW input, every stage
    output named output_<i>."""
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        n_out = len(net(example))
    export_onnx(net, example, path, [f"output_{i}" for i in range(n_out)], opset=11)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--stacks", type=int, default=2)
    ap.add_argument("--flip-test", action="store_true", help="export with the flip test")
    ap.add_argument("--checkpoint", help="a state dict of HourglassNet to load")
    args = ap.parse_args()
    net = seeded(HourglassNet(args.channels, args.stacks))
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    export(FlipTest(net) if args.flip_test else net, tuple(args.size), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
