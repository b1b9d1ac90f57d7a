"""Small mmpose-like pose networks built in PyTorch and exported to ONNX for pass tests.

- `HourglassLike`: stem, two stacked hourglass stages (MaxPool down, nearest and bilinear
  upsample up, residual adds), a multi-stage head with ConvTranspose returning one
  heatmap per stage (mmpose TopdownHeatmapMultiStageHead style).
- `HRNetLike`: two branches at two resolutions exchanging information (strided conv down,
  1x1 conv + nearest upsample + add up), a final 1x1 heatmap conv, plus an auxiliary
  heatmap output taken before the last exchange (a per-stage list like the hourglass one).
- `FlipTest`: mmpose-style test-time flip (flip the input along width, run the same
  network, flip the heatmaps back, swap left/right channels with the COCO flip pairs,
  optionally shift one pixel as `shift_heatmap` does, average with the plain output).
- `ArgmaxDecode` / `Preprocess`: in-graph post-/pre-processing for `extract` tests.

Weights come from fixed seeds and BatchNorm layers get non-trivial running statistics, so
fusing or dropping the wrong thing shows up in the numbers.
"""

from __future__ import annotations

import copy
import io
import warnings

import onnx
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 3, 64, 48)
NUM_JOINTS = 17
COCO_FLIP_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]


def flip_permutation(num_channels: int, pairs: list[list[int]]) -> list[int]:
    """Channel order after swapping each left/right pair."""
    perm = list(range(num_channels))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the input (through a 1x1 conv when widths differ)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, 3, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Hourglass(nn.Module):
    """Recursive hourglass: skip branch + (pool, residual, inner, residual, upsample)."""

    def __init__(self, depth: int, ch: int, mode: str = "nearest"):
        super().__init__()
        self.up1 = Residual(ch, ch)
        self.low1 = Residual(ch, ch)
        self.low2 = Hourglass(depth - 1, ch, "bilinear") if depth > 1 else Residual(ch, ch)
        self.low3 = Residual(ch, ch)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        if self.mode == "bilinear":
            up = F.interpolate(low, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            up = F.interpolate(low, scale_factor=2.0, mode="nearest")
        return self.up1(x) + up


class HourglassLike(nn.Module):
    """Two-stage hourglass; returns the list of per-stage heatmaps (last is the best)."""

    def __init__(self, ch: int = 16, stages: int = 2, joints: int = NUM_JOINTS):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, ch, 3, 2), nn.MaxPool2d(2))
        self.hgs = nn.ModuleList(Hourglass(2, ch) for _ in range(stages))
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(ch, ch, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch),
                nn.ReLU(),
                nn.Conv2d(ch, joints, 1),
            )
            for _ in range(stages)
        )
        self.merge_feat = nn.ModuleList(nn.Conv2d(ch, ch, 1) for _ in range(stages - 1))
        self.merge_heat = nn.ModuleList(nn.Conv2d(joints, ch, 1) for _ in range(stages - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, (hg, head) in enumerate(zip(self.hgs, self.heads)):
            feat = hg(x)
            heat = head(feat)
            outs.append(heat)
            if i < len(self.merge_feat):
                x = x + self.merge_feat[i](feat) + self.merge_heat[i](F.max_pool2d(heat, 2))
        return outs


class HRNetLike(nn.Module):
    """Two resolutions with two exchange units; returns [auxiliary heatmap, final heatmap]."""

    def __init__(self, c1: int = 16, c2: int = 32, joints: int = NUM_JOINTS):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, c1, 3, 2), conv_bn_relu(c1, c1, 3, 2))
        self.to_low = conv_bn_relu(c1, c2, 3, 2)
        self.units = nn.ModuleList()
        for _ in range(2):
            self.units.append(
                nn.ModuleDict(
                    {
                        "b1": Residual(c1, c1),
                        "b2": Residual(c2, c2),
                        "up": nn.Sequential(nn.Conv2d(c2, c1, 1, bias=False), nn.BatchNorm2d(c1)),
                        "down": nn.Sequential(
                            nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2)
                        ),
                    }
                )
            )
        self.aux = nn.Conv2d(c1, joints, 1)
        self.final = nn.Conv2d(c1, joints, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)
        low = self.to_low(h)
        aux = None
        for unit in self.units:
            h, low = unit["b1"](h), unit["b2"](low)
            aux = self.aux(h)
            up = F.interpolate(unit["up"](low), scale_factor=2.0, mode="nearest")
            h, low = F.relu(h + up), F.relu(low + unit["down"](h))
        return [aux, self.final(h)]


class LastOutput(nn.Module):
    """The same network, keeping only its last per-stage output (the reference)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


class FlipTest(nn.Module):
    """mmpose-style flip test around `net`, applied to every per-stage output.

    flip: "flip" (torch.flip, exported as Slice step -1) or "gather" (index_select with
    reversed indices); perm: "gather" (index the channel axis) or "concat" (slice each
    channel and concatenate); shift: None, "cat" (Slice+Concat) or "setitem" (in-place
    `out[..., 1:] = out[..., :-1]` as in mmpose); average: "mul" ((a + b) * 0.5),
    "div" ((a + b) / 2) or "halves" (a * 0.5 + b * 0.5).
    """

    def __init__(
        self,
        net: nn.Module,
        flip_pairs: list[list[int]] = COCO_FLIP_PAIRS,
        shift: str | None = None,
        flip: str = "flip",
        perm: str = "gather",
        average: str = "mul",
    ):
        super().__init__()
        self.net = net
        self.pairs = flip_pairs
        self.shift, self.flip_mode, self.perm_mode = shift, flip, perm
        self.average = average

    def _avg(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.average == "div":
            return (a + b) / 2
        if self.average == "halves":
            return a * 0.5 + b * 0.5
        return (a + b) * 0.5

    def _flip(self, t: torch.Tensor) -> torch.Tensor:
        if self.flip_mode == "gather":
            idx = torch.arange(t.shape[3] - 1, -1, -1)
            return torch.index_select(t, 3, idx)
        return torch.flip(t, [3])

    def _back(self, t: torch.Tensor) -> torch.Tensor:
        t = self._flip(t)
        perm = flip_permutation(t.shape[1], self.pairs)
        if self.perm_mode == "concat":
            t = torch.cat([t[:, c : c + 1] for c in perm], dim=1)
        else:
            t = t[:, torch.tensor(perm)]
        if self.shift == "cat":
            t = torch.cat([t[:, :, :, :1], t[:, :, :, :-1]], dim=3)
        elif self.shift == "setitem":
            t = t.clone()
            t[:, :, :, 1:] = t[:, :, :, :-1].clone()
        return t

    def forward(self, x: torch.Tensor):
        plain = self.net(x)
        flipped = self.net(self._flip(x))
        if isinstance(plain, torch.Tensor):
            return self._avg(plain, self._back(flipped))
        return [self._avg(p, self._back(f)) for p, f in zip(plain, flipped)]


class BatchedFlipTest(FlipTest):
    """Flip test run as one batch of two (plain and flipped input concatenated)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.net(torch.cat([x, self._flip(x)], dim=0))
        return self._avg(both[:1], self._back(both[1:]))


class ArgmaxDecode(nn.Module):
    """Heatmaps followed by in-graph decoding to (x, y, score) per joint."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = self.net(x)
        n, k, h, w = heat.shape
        flat = heat.reshape(n, k, h * w)
        score, idx = flat.max(dim=2)
        xs = (idx % w).float()
        ys = torch.div(idx, w, rounding_mode="floor").float()
        return torch.stack([xs, ys, score], dim=2)


class Preprocess(nn.Module):
    """In-graph normalization of a 0..255 image (mean/std like mmpose), then `net`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Fixed random weights and non-trivial BatchNorm statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return net.eval()


def hourglass_like(seed: int = 0) -> HourglassLike:
    torch.manual_seed(seed)
    return randomize(HourglassLike(), seed)


def hrnet_like(seed: int = 1) -> HRNetLike:
    torch.manual_seed(seed)
    return randomize(HRNetLike(), seed)


def export(
    module: nn.Module,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    opset: int = 13,
    dynamo: bool = False,
) -> onnx.ModelProto:
    """Export with the TorchScript exporter (fast, deterministic names) or, with
    `dynamo=True`, torch's default torch.export-based exporter (opset >= 18)."""
    module.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    if dynamo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=max(opset, 18), verbose=False
            )
        return program.model_proto
    with torch.no_grad():
        outs = module(example)
    n_out = len(outs) if isinstance(outs, (list, tuple)) else 1
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=[f"output_{i}" for i in range(n_out)],
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


_CACHE: dict[tuple, bytes] = {}


def build(kind: str, wrap: str = "none", **flip_options) -> nn.Module:
    """A fixture network by name: kind hourglass|hrnet; wrap none|last|flip|flip-last|decode|
    flip-decode|preprocess|preprocess-flip|flip-copy|flip-batched|flip-other (second branch:
    other weights)."""
    net = hourglass_like() if kind == "hourglass" else hrnet_like()
    if wrap == "none":
        return net
    if wrap == "last":
        return LastOutput(net)
    if wrap == "flip":
        return FlipTest(net, **flip_options)
    if wrap == "flip-last":
        return FlipTest(LastOutput(net), **flip_options)
    if wrap == "decode":
        return ArgmaxDecode(LastOutput(net))
    if wrap == "flip-decode":
        return ArgmaxDecode(FlipTest(LastOutput(net), **flip_options))
    if wrap == "preprocess":
        return Preprocess(LastOutput(net))
    if wrap == "flip-copy":  # second branch: a copy of the network (equal weight values)
        return OtherFlip(LastOutput(net), LastOutput(copy.deepcopy(net)), **flip_options)
    if wrap == "flip-batched":
        return BatchedFlipTest(LastOutput(net), **flip_options)
    if wrap == "preprocess-flip":  # the flip applies to the in-graph normalized image
        return Preprocess(FlipTest(LastOutput(net), **flip_options))
    if wrap == "flip-other":
        other = hourglass_like(seed=7) if kind == "hourglass" else hrnet_like(seed=7)
        return OtherFlip(LastOutput(net), LastOutput(other), **flip_options)
    raise ValueError(wrap)


class OtherFlip(FlipTest):
    """Looks like a flip test, but the flipped input goes through a different network."""

    def __init__(self, net: nn.Module, other: nn.Module, **kw):
        super().__init__(net, **kw)
        self.other = other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._avg(self.net(x), self._back(self.other(self._flip(x))))


def cached_export(kind: str, wrap: str = "none", **flip_options) -> onnx.ModelProto:
    """Export once per test session; every call returns a fresh copy (passes edit in place)."""
    key = (kind, wrap, tuple(sorted(flip_options.items(), key=lambda kv: kv[0])))
    key = tuple(str(k) for k in key)
    if key not in _CACHE:
        _CACHE[key] = export(build(kind, wrap, **flip_options)).SerializeToString()
    return onnx.load_from_string(_CACHE[key])


def torch_outputs(kind: str, wrap: str, x) -> list:
    """Run the PyTorch network itself (the ground truth, independent of ONNX)."""
    with torch.no_grad():
        out = build(kind, wrap)(torch.from_numpy(x))
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [o.numpy() for o in outs]
