"""A quantized layer as weight rows times input vectors: what weight rounding works on.

An output channel of a Conv at one position is the dot product of the channel's weight
row (C/g * kh * kw values) with one input patch. A ConvTranspose is the same thing in
disguise: a stride-1 Conv over its input with (stride - 1) zeros between the pixels,
padded by d * (k - 1) - pad, its kernel flipped and its in / out channel axes swapped. A
Gemm or MatMul with a constant B is the rows of B^T against the rows of A. `LayerView`
keeps that geometry: `rows(w)` turns the weight into (groups, rows, cols) and `weight`
turns such rows back; `patches(x, limit, rng)` draws at most `limit` input vectors
(groups, P, cols) from one sample of the layer's input, so sum(p p^T) is the Hessian of
the layer's squared output error in its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper


@dataclass(frozen=True)
class LayerView:
    """kind: "conv", "deconv" (ConvTranspose) or "linear" (Gemm / MatMul, constant B);
    `geo` is the (equivalent) Conv's geometry, `upsample` the ConvTranspose's strides."""

    kind: str
    weight_shape: tuple[int, ...]
    group: int = 1
    geo: dict[str, Any] = field(default_factory=dict)
    upsample: tuple[int, int] = (1, 1)
    transposed: bool = False  # linear: the weight is stored (K, N), rows are its columns
    trans_a: bool = False  # Gemm transA: the input is A^T

    @property
    def cols(self) -> int:
        """Inputs of one weight row."""
        s = self.weight_shape
        if self.kind == "conv":
            return int(np.prod(s[1:]))
        if self.kind == "deconv":
            return (s[0] // self.group) * s[2] * s[3]
        return s[0] if self.transposed else s[1]

    def rows(self, w: np.ndarray) -> np.ndarray:
        """The weight as (groups, output channels per group, cols)."""
        g = self.group
        if self.kind == "conv":
            return w.reshape(g, w.shape[0] // g, -1)
        if self.kind == "deconv":  # (Cin, Cout/g, kh, kw) -> per group (Cout/g, Cin/g*kh*kw)
            cin, cout_g, kh, kw = w.shape
            flipped = w.reshape(g, cin // g, cout_g, kh, kw)[..., ::-1, ::-1]
            return flipped.transpose(0, 2, 1, 3, 4).reshape(g, cout_g, -1)
        return (w.T if self.transposed else w)[None]

    def weight(self, rows: np.ndarray) -> np.ndarray:
        """`rows` back in the layer's weight layout (the inverse of `rows`)."""
        s = self.weight_shape
        if self.kind == "conv":
            return rows.reshape(s)
        if self.kind == "deconv":
            cin, cout_g, kh, kw = s
            w = rows.reshape(self.group, cout_g, cin // self.group, kh, kw).transpose(0, 2, 1, 3, 4)
            return np.ascontiguousarray(w[..., ::-1, ::-1]).reshape(s)
        return rows[0].T if self.transposed else rows[0]

    def blocks(self) -> list[tuple[tuple[int, int] | None, np.ndarray]]:
        """Column sets no input vector spans two of, each with the output phase (y, x)
        that reads it (None: every position): the Hessian is block diagonal over them.
        A stride-s ConvTranspose's output positions of one phase (position mod s) read
        only the taps a with (phase + a * d - pad) = 0 mod s, the other taps meet the
        inserted zeros: s^2 independent Convs of cols / s^2 columns each."""
        if self.kind != "deconv" or self.upsample == (1, 1):
            return [(None, np.arange(self.cols))]
        (kh, kw), (dh, dw) = self.geo["kernel"], self.geo["dilations"]
        (sh, sw), (top, left) = self.upsample, self.geo["pads"][:2]
        taps = np.arange(kh * kw).reshape(kh, kw)
        per_channel = kh * kw
        channels = np.arange(self.weight_shape[0] // self.group)[:, None] * per_channel
        out: list[tuple[tuple[int, int] | None, np.ndarray]] = []
        for ry in range(sh):
            for rx in range(sw):
                rows_on = (ry + np.arange(kh) * dh - top) % sh == 0
                cols_on = (rx + np.arange(kw) * dw - left) % sw == 0
                active = taps[np.ix_(rows_on, cols_on)].reshape(-1)
                if active.size:
                    out.append(((ry, rx), (channels + active[None, :]).reshape(-1)))
        return out

    @property
    def widest(self) -> int:
        """Columns of the largest block (GPTQ's cost is cubic in it)."""
        return max(len(cols) for _, cols in self.blocks())

    def hessians(self, x: np.ndarray, limit: int, rng: np.random.Generator):
        """sum p p^T over at most `limit` random input vectors of one sample, per block of
        `blocks()`: a list of ((groups, c, c) float32, vectors summed), or None when `x` is
        not an input this layer reads."""
        drawn = self._draw(x, limit, rng)
        if drawn is None:
            return None
        p, index = drawn
        out = []
        for phase, cols in self.blocks():
            if phase is None:
                sub = p
            else:
                on = (index[0] % self.upsample[0] == phase[0]) & (
                    index[1] % self.upsample[1] == phase[1]
                )
                sub = np.ascontiguousarray(p[:, on][:, :, cols])
            out.append((np.matmul(sub.transpose(0, 2, 1), sub), sub.shape[1]))  # float32 BLAS
        return out

    def patches(self, x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray | None:
        """At most `limit` random input vectors of one sample (groups, P, cols), float32;
        None when `x` is not the input this layer can read (batch 1, its rank)."""
        drawn = self._draw(x, limit, rng)
        return None if drawn is None else drawn[0]

    def _draw(self, x: np.ndarray, limit: int, rng: np.random.Generator):
        """(vectors (groups, P, cols), their output positions (ys, xs) or None)."""
        if self.kind == "linear":
            if self.trans_a:
                if x.ndim != 2:
                    return None
                x = x.T
            flat = x.reshape(-1, x.shape[-1])
            if flat.shape[1] != self.cols:
                return None
            return np.ascontiguousarray(flat[rng.permutation(len(flat))[:limit]])[None], None
        if x.ndim != 4 or x.shape[0] != 1:
            return None
        if self.upsample != (1, 1):
            x = _zero_inserted(x, self.upsample)
        index = patch_index(x.shape, self.geo, limit, rng)
        return conv_patches(x, self.geo, index), index


def _zero_inserted(x: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """(1, C, H, W) -> (1, C, (H-1)*sh+1, (W-1)*sw+1) with x at every stride-th pixel."""
    sh, sw = strides
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out


def view_of(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> LayerView | None:
    """The view of a Conv, ConvTranspose, Gemm or MatMul whose weight (input 1) has
    `weight_shape`; None for layers it does not cover (auto_pad SAME_*, an explicit
    output_shape, batched MatMul weights, pads wider than the kernel)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = tuple(int(d) for d in weight_shape)
    if node.op_type in ("Gemm", "MatMul"):
        if len(shape) != 2:
            return None
        if node.op_type == "MatMul":
            return LayerView("linear", shape, transposed=True)
        trans_b, trans_a = bool(attrs.get("transB", 0)), bool(attrs.get("transA", 0))
        return LayerView("linear", shape, transposed=not trans_b, trans_a=trans_a)
    if node.op_type not in ("Conv", "ConvTranspose") or len(shape) != 4:
        return None
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID") or "output_shape" in attrs:
        return None
    group = int(attrs.get("group", 1))
    pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    kernel = (shape[2], shape[3])
    if node.op_type == "Conv":
        geo = {"group": group, "strides": strides, "pads": pads, "dilations": dilations}
        return LayerView("conv", shape, group, {**geo, "kernel": kernel})
    extra = list(attrs.get("output_padding", [0, 0]))
    reach = [dilations[0] * (kernel[0] - 1), dilations[1] * (kernel[1] - 1)]
    same = [
        reach[0] - pads[0],
        reach[1] - pads[1],
        reach[0] - pads[2] + extra[0],
        reach[1] - pads[3] + extra[1],
    ]
    if min(same) < 0:
        return None
    geo = {"group": group, "strides": [1, 1], "pads": same, "dilations": dilations}
    return LayerView("deconv", shape, group, {**geo, "kernel": kernel}, (strides[0], strides[1]))


def patch_index(shape: tuple[int, ...], geo: dict, limit: int, rng: np.random.Generator):
    """Output positions (ys, xs) of at most `limit` random patches of a (1, C, H, W) input."""
    t, left, b, r = geo["pads"]
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    h, w = shape[2] + t + b, shape[3] + left + r
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    return np.divmod(rng.permutation(oh * ow)[:limit], ow)


def conv_patches(x: np.ndarray, geo: dict, index) -> np.ndarray:
    """im2col of a (1, C, H, W) input at the output positions `index`:
    (groups, patches, C/g * kh * kw), C-contiguous.

    One np.take over the flattened padded image: fancy indexing x[:, iy, ix] would give
    the same values with the channels innermost in memory, and the Hessian's batched
    matmul over such a view of a depthwise Conv's hundreds of groups is 3x slower."""
    t, left, b, r = geo["pads"]
    x = np.pad(x[0], ((0, 0), (t, b), (left, r)))
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    c, height, width = x.shape
    ys, xs = index
    iy = ys[:, None] * sh + np.arange(kh)[None, :] * dh  # (P, kh)
    ix = xs[:, None] * sw + np.arange(kw)[None, :] * dw  # (P, kw)
    flat = (iy[:, :, None] * width + ix[:, None, :]).reshape(-1)  # (P * kh * kw)
    p = np.take(x.reshape(c, height * width), flat, axis=1)  # (C, P * kh * kw)
    g = geo["group"]
    p = p.reshape(g, c // g, len(ys), kh * kw)
    if c // g > 1:
        p = np.ascontiguousarray(p.transpose(0, 2, 1, 3))
    return p.reshape(g, len(ys), (c // g) * kh * kw)
