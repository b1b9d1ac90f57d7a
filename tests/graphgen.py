"""Hypothesis strategy for random, valid conv-net ONNX graphs.

Each graph is a chain of layers on an NCHW tensor, drawn from the ops pose networks are
made of (Conv, ConvTranspose, BatchNormalization, Relu/Clip, Add, Mul, Concat, Resize,
Pad, AveragePool, Transpose, MatMul(+Add), Identity, Dropout, constant subgraphs), with
the patterns the fusion passes look for *and* their near misses (non-zero Pad, pads
before a pool that excludes padding, non-per-channel constants, Transposes that do not
cancel). Weights come from a seeded numpy generator so an example is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

LAYERS = [
    "conv",
    "conv_transpose",
    "bn",
    "relu",
    "clip",
    "add_const",
    "mul_const",
    "add_prev",
    "concat_prev",
    "resize",
    "pad_conv",
    "pad_pool",
    "pad_nonzero",
    "transposes",
    "matmul_add",
    "identity",
    "dropout",
    "const_subgraph",
    "conv_bn",
    "conv_affine",
]


@dataclass
class _Builder:
    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    n: int = 0
    # tensors so far with their (C, H, W) shape, for residual Add / Concat
    seen: list = field(default_factory=list)

    def name(self, tag: str) -> str:
        """Exporter-style names, with the ':' and '/' some backends reject."""
        self.n += 1
        return f"net/{tag}_{self.n}:0"

    def const(self, arr: np.ndarray, tag: str = "w") -> str:
        name = self.name(tag)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(
        self, op: str, inputs: list[str], tag: str | None = None, n_out: int = 1, **attrs
    ) -> str:
        outs = [self.name(tag or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0]

    def weights(self, *shape: int) -> np.ndarray:
        return self.rng.normal(0, 0.5, shape).astype(np.float32)


def _layer(b: _Builder, kind: str, x: str, shape: tuple[int, int, int], draw) -> tuple[str, tuple]:
    c, h, w = shape
    rng = b.rng
    if kind == "conv":
        cout = draw(st.integers(1, 6))
        k = draw(st.sampled_from([1, 3]))
        depthwise = cout == c and c > 1 and draw(st.booleans())
        group = c if depthwise else 1
        stride = draw(st.sampled_from([1, 1, 2])) if min(h, w) >= 4 else 1
        pads = [draw(st.integers(0, 1)) for _ in range(4)] if k == 3 else [0, 0, 0, 0]
        if h + pads[0] + pads[2] < k or w + pads[1] + pads[3] < k:
            pads = [1, 1, 1, 1]
        ins = [x, b.const(b.weights(cout, c // group, k, k))]
        if draw(st.booleans()):
            ins.append(b.const(b.weights(cout)))
        y = b.node(
            "Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=group
        )
        oh = (h + pads[0] + pads[2] - k) // stride + 1
        ow = (w + pads[1] + pads[3] - k) // stride + 1
        return y, (cout, oh, ow)
    if kind == "conv_transpose":
        groups = [g for g in (1, 2, 3) if c % g == 0]
        group = draw(st.sampled_from(groups))
        per = draw(st.integers(1, 3))
        cout = per * group
        k = draw(st.sampled_from([1, 2, 3]))
        stride = draw(st.sampled_from([1, 2])) if max(h, w) <= 8 else 1
        ins = [x, b.const(b.weights(c, per, k, k))]
        if draw(st.booleans()):
            ins.append(b.const(b.weights(cout)))
        y = b.node("ConvTranspose", ins, kernel_shape=[k, k], strides=[stride, stride], group=group)
        return y, (cout, (h - 1) * stride + k, (w - 1) * stride + k)
    if kind == "bn":
        params = [
            rng.uniform(0.5, 1.5, c),
            rng.normal(0, 0.2, c),
            rng.normal(0, 0.2, c),
            rng.uniform(0.5, 1.5, c),
        ]
        ins = [x] + [b.const(p.astype(np.float32), "bn") for p in params]
        return b.node("BatchNormalization", ins, epsilon=1e-3), shape
    if kind == "relu":
        return b.node("Relu", [x]), shape
    if kind == "clip":
        lo = b.const(np.array(0.0, np.float32), "lo")
        hi = b.const(np.array(6.0, np.float32), "hi")
        return b.node("Clip", [x, lo, hi]), shape
    if kind in ("add_const", "mul_const"):
        form = draw(st.sampled_from(["cvec", "1c11", "scalar", "full", "hw"]))
        dims = {
            "cvec": (c, 1, 1),
            "1c11": (1, c, 1, 1),
            "scalar": (),
            "full": (1, c, h, w),
            "hw": (h, w),
        }[form]
        val = rng.uniform(0.5, 1.5, dims).astype(np.float32)
        op = "Add" if kind == "add_const" else "Mul"
        ins = [x, b.const(val, "k")]
        if draw(st.booleans()):
            ins.reverse()
        return b.node(op, ins), shape
    if kind == "add_prev":
        same = [t for t, s in b.seen if s == shape and t != x]
        if not same:
            return x, shape
        return b.node("Add", [x, draw(st.sampled_from(same))]), shape
    if kind == "concat_prev":
        same = [(t, s) for t, s in b.seen if s[1:] == shape[1:]]
        t, s = draw(st.sampled_from(same))
        return b.node("Concat", [x, t], axis=1), (c + s[0], h, w)
    if kind == "resize":
        if max(h, w) > 8:
            return x, shape
        scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
        mode = draw(st.sampled_from(["nearest", "linear"]))
        return b.node("Resize", [x, "", scales], mode=mode), (c, 2 * h, 2 * w)
    if kind in ("pad_conv", "pad_pool", "pad_nonzero"):
        p = (
            [0, 0]
            + [draw(st.integers(0, 2)) for _ in range(2)]
            + [0, 0]
            + [draw(st.integers(0, 2)) for _ in range(2)]
        )
        ins = [x, b.const(np.array(p, np.int64), "pads")]
        if kind == "pad_nonzero":
            ins.append(b.const(np.array(draw(st.sampled_from([0.5, -1.0])), np.float32), "value"))
        elif draw(st.booleans()):
            ins.append(b.const(np.array(0.0, np.float32), "value"))
        y = b.node("Pad", ins, mode="constant")
        ph, pw = h + p[2] + p[6], w + p[3] + p[7]
        if kind == "pad_pool":
            k = min(2, ph, pw)
            own = [draw(st.integers(0, 1)) for _ in range(4)] if k > 1 else [0, 0, 0, 0]
            z = b.node(
                "AveragePool",
                [y],
                kernel_shape=[k, k],
                pads=own,
                count_include_pad=draw(st.integers(0, 1)),
            )
            return z, (c, ph + own[0] + own[2] - k + 1, pw + own[1] + own[3] - k + 1)
        cout = draw(st.integers(1, 4))
        k = 3 if min(ph, pw) >= 3 else 1
        z = b.node("Conv", [y, b.const(b.weights(cout, c, k, k))], kernel_shape=[k, k])
        return z, (cout, ph - k + 1, pw - k + 1)
    if kind == "transposes":
        p1 = list(draw(st.permutations([0, 1, 2, 3])))
        inverse = draw(st.booleans())
        t = b.node("Transpose", [x], perm=p1)
        if inverse:
            p2 = list(np.argsort(p1))
            return b.node("Transpose", [t], perm=p2), shape
        p2 = list(draw(st.permutations([0, 1, 2, 3])))
        t2 = b.node("Transpose", [t], perm=p2)
        q = [p1[i] for i in p2]  # t2 = transpose(x, q); undo it with argsort(q)
        return b.node("Transpose", [t2], perm=[int(v) for v in np.argsort(q)]), shape
    if kind == "matmul_add":
        hw = h * w
        if hw > 64:
            return x, shape
        flat = b.node("Reshape", [x, b.const(np.array([c, hw], np.int64), "shape")])
        mm = b.node("MatMul", [flat, b.const((b.weights(hw, hw) / np.sqrt(hw)).astype(np.float32))])
        cshape = draw(st.sampled_from([(hw,), (1, hw), (c, 1), (c, hw), ()]))
        ins = [mm, b.const(b.rng.normal(0, 0.5, cshape).astype(np.float32), "bias")]
        if draw(st.booleans()):
            ins.reverse()
        s = b.node("Add", ins)
        return b.node("Reshape", [s, b.const(np.array([1, c, h, w], np.int64), "shape")]), shape
    if kind == "conv_bn":
        y, shape = _layer(b, draw(st.sampled_from(["conv", "conv_transpose"])), x, shape, draw)
        return _layer(b, "bn", y, shape, draw)
    if kind == "conv_affine":
        y, shape = _layer(b, "conv", x, shape, draw)
        for _ in range(draw(st.integers(1, 2))):
            y, shape = _layer(b, draw(st.sampled_from(["add_const", "mul_const"])), y, shape, draw)
        return y, shape
    if kind == "identity":
        return b.node("Identity", [x]), shape
    if kind == "dropout":
        return b.node("Dropout", [x], n_out=draw(st.sampled_from([1, 2]))), shape
    if kind == "const_subgraph":
        a = b.node(
            "Constant",
            [],
            value=numpy_helper.from_array(rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32)),
        )
        s = b.node("Sqrt", [a])
        t = b.node("Mul", [s, b.const(np.array(2.0, np.float32), "two")])
        return b.node("Mul", [x, t]), shape
    raise AssertionError(kind)


# Layer mixes that make each pass's pattern (and its near misses) frequent.
FOCUS = {
    "fuse-bn": ["conv_bn", "conv", "bn", "relu"],
    "fuse-pad": ["pad_conv", "pad_pool", "pad_nonzero", "conv"],
    "fuse-conv-affine": ["conv_affine", "bn", "add_const", "mul_const"],
    "matmul-to-gemm": ["matmul_add", "relu", "conv"],
    "cancel-transposes": ["transposes", "relu", "identity"],
    "fold-constants": ["const_subgraph", "relu"],
    "eliminate-nops": ["identity", "dropout", "add_const", "mul_const", "concat_prev"],
    "dedupe": ["add_prev", "concat_prev", "relu", "conv"],
}


def nets_for(pass_name: str) -> st.SearchStrategy[onnx.ModelProto]:
    """Random nets, half of them drawn from the layer mix `pass_name` acts on."""
    focus = FOCUS.get(pass_name)
    return st.one_of(conv_nets(), conv_nets(layers=focus)) if focus else conv_nets()


@st.composite
def conv_nets(draw, max_layers: int = 8, layers: list[str] | None = None) -> onnx.ModelProto:
    """A random, checker-valid opset-17 model with one NCHW float input."""
    seed = draw(st.integers(0, 2**31 - 1))
    b = _Builder(np.random.default_rng(seed))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(3, 8)), draw(st.integers(3, 8))
    x, shape = "image:0", (c, h, w)
    b.seen.append((x, shape))
    kinds = draw(st.lists(st.sampled_from(layers or LAYERS), min_size=1, max_size=max_layers))
    for kind in kinds:
        if shape[1] * shape[2] > 400:  # keep the tensors small
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        x, shape = _layer(b, kind, x, shape, draw)
        b.seen.append((x, shape))
    outputs = [x]
    if draw(st.booleans()):  # end in an Identity, as exporters do
        outputs = [b.node("Identity", [x], tag="output")]
    if len(b.seen) > 2 and draw(st.booleans()):  # a second output from the middle
        mid = draw(st.sampled_from([t for t, _ in b.seen[1:-1]]))
        if mid not in outputs:
            outputs.append(mid)
    shapes = dict(b.seen)
    graph = helper.make_graph(
        b.nodes,
        "random_convnet",
        [helper.make_tensor_value_info("image:0", TensorProto.FLOAT, [1, c, h, w])],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, *shapes.get(o, shape)])
            for o in outputs
        ],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
