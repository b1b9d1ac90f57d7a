"""Cross-layer equalization: rescale channels between two layers so per-tensor int8 fits.

A Conv P feeding, through Relu / Clip(0, M) or directly, only Convs C can have its output
channel i divided by s_i if every C's input channel i is multiplied by s_i: the model
computes the same function (Relu commutes with a positive scale; Clip's upper bound
becomes M / s_i per channel, written as Relu then Min with a per-channel constant). P's
weights are quantized per output channel, so dividing its rows changes nothing there;
what changes is the activation between P and C, quantized with ONE scale for all
channels: channels much smaller than the largest lose their precision (MobileNet's
depthwise outputs, Nagel et al. 2019, "Data-Free Quantization"). With s_i =
sqrt(a_i / r_i) (a_i: channel i's observed range, r_i: the largest |weight| C applies to
it) the activation range and C's weight range of every channel both become
sqrt(a_i * r_i): balanced. A depthwise C quantizes per channel too, so there s_i = a_i /
max(a) makes every channel of the activation equally large at no cost.

`find_pairs` lists the pairs, `equalization(model, samples)` measures the ranges and
returns the scales (what a plan records), `apply_equalization` rewrites a model with
them, deterministically, so a plan can be applied again to the original model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import add_initializer, as_tensor, n_uses, name_of, to_ir, to_proto

MIN_RANGE = 1e-6
MAX_SCALE = 16  # never rescale a channel by more than this either way (rarely active ones)


@dataclass
class Pair:
    producer: str  # Conv node name
    act: str  # Relu / Clip node name, "" when P feeds C directly
    consumers: list[str]  # Conv node names reading the activation


def _group(node: ir.Node) -> int:
    return node.attributes.get_int("group", 1)


def _weight(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer (graph input or not), else None."""
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    return value.const_value.numpy()


def find_pairs(model: onnx.ModelProto, skip: Sequence[str] = (), clip: bool = True) -> list[Pair]:
    """Conv -> [Relu | Clip(0, M)] -> Conv(s) chains whose middle tensor nothing else reads
    (clip=False: not through a Clip, the pairs rescaled without a new node)."""
    return [
        Pair(p.name or "", act.name or "" if act is not None else "", [c.name or "" for c in cs])
        for p, act, cs in _find_pairs(to_ir(model).graph, skip, clip)
    ]


def _find_pairs(
    g: ir.Graph, skip: Sequence[str] = (), clip: bool = True
) -> list[tuple[ir.Node, ir.Node | None, list[ir.Node]]]:
    """`find_pairs` on the IR: (producer, activation or None, consumers)."""
    skipped = set(skip)

    def plain_conv(n: ir.Node) -> bool:
        if n.op_type != "Conv" or not n.name or n.name in skipped or len(n.inputs) < 2:
            return False
        w, bias = n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
        return (
            w is not None
            and w.is_initializer()
            and w.const_value is not None
            and len(w.const_value.shape) == 4
            and (bias is None or bias.is_initializer())
        )

    def readers(v: ir.Value) -> list[ir.Node] | None:
        """The nodes reading `v`, once per read; None when one is in a subgraph (it
        would see the rescaled channels uncompensated)."""
        nodes = [u.node for u in v.uses()]
        return None if any(n.graph is not g for n in nodes) else nodes

    pairs = []
    for p in g:
        if not plain_conv(p) or p.outputs[0].is_graph_output():
            continue
        nxt = readers(p.outputs[0])
        act = None
        if nxt is not None and len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip"):
            act = nxt[0]
            if act.op_type == "Clip" and not (clip and _clip_from_zero(act)):
                continue
            if act.outputs[0].is_graph_output():
                continue
            nxt = readers(act.outputs[0])
        middle = (act or p).outputs[0]
        if not nxt or not all(plain_conv(c) and c.inputs[0] is middle for c in nxt):
            continue
        w = _weight(p.inputs[1])
        assert w is not None  # a plain Conv's
        if any(not _takes_channels(c, w.shape[0]) for c in nxt):
            continue
        pairs.append((p, act, nxt))
    return pairs


def _clip_from_zero(clip: ir.Node) -> bool:
    """Clip whose lower bound is 0 and upper bound a constant (ReLU6)."""
    lo = _weight(clip.inputs[1]) if len(clip.inputs) > 1 else None
    hi = clip.inputs[2] if len(clip.inputs) > 2 else None
    if lo is None or (hi is not None and not hi.is_initializer()):
        return False
    return float(lo) == 0.0


def _takes_channels(c: ir.Node, channels: int) -> bool:
    """C reads `channels` input channels: a plain Conv, or a depthwise one (group = C)."""
    w = _weight(c.inputs[1])
    assert w is not None  # a plain Conv's
    group = _group(c)
    return (group == 1 and w.shape[1] == channels) or (group == channels and w.shape[1] == 1)


def channel_ranges(
    model: onnx.ModelProto, samples: Iterable[dict[str, np.ndarray]], tensors: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) max |x| of `tensors` over the samples."""
    from graphkit.runtime.ort import make_session, with_outputs

    names = list(dict.fromkeys(tensors))
    sess = make_session(with_outputs(model, names))
    out: dict[str, np.ndarray] = {}
    for feeds in samples:
        for name, y in zip(names, sess.run(names, feeds)):
            m = np.abs(y).max(axis=tuple(i for i in range(y.ndim) if i != 1))
            out[name] = np.maximum(out[name], m) if name in out else m
    return out


def equalization(
    model: onnx.ModelProto,
    samples: Iterable[dict[str, np.ndarray]],
    skip: Sequence[str] = (),
    clip: bool = True,
) -> list[dict]:
    """The pairs of `model` (`find_pairs`) with their scales, measured on `samples` (read
    once): [{producer, act, consumers, scales}] (the plan's `equalization` field)."""
    pairs = _find_pairs(to_ir(model).graph, skip, clip)
    if not pairs:
        return []
    tensor = [name_of((act or p).outputs[0]) for p, act, _ in pairs]
    ranges = channel_ranges(model, samples, tensor)
    out = []
    for (p, act, consumers), t in zip(pairs, tensor):
        a = np.maximum(ranges[t].astype(np.float64), MIN_RANGE)
        depthwise = all(_group(c) > 1 for c in consumers)
        if depthwise:
            s = a / a.max()
        else:
            r = np.zeros_like(a)
            for c in consumers:
                w = np.abs(np.asarray(_weight(c.inputs[1])))
                r = np.maximum(r, w.max(axis=tuple(i for i in range(w.ndim) if i != 1)))
            s = np.sqrt(a / np.maximum(r, MIN_RANGE))
            s = s / s.max()
        s = np.clip(s, 1 / MAX_SCALE, MAX_SCALE)
        pair = Pair(
            p.name or "",
            act.name or "" if act is not None else "",
            [c.name or "" for c in consumers],
        )
        out.append({**pair.__dict__, "scales": [float(x) for x in s]})
    return out


def apply_equalization(model: onnx.ModelProto, eq: Sequence[dict]) -> onnx.ModelProto:
    """A copy of `model` with each pair's channels rescaled (module doc). Shared
    initializers are copied before they change, under names derived from the node."""
    out = to_ir(model)
    g = out.graph
    nodes = {n.name: n for n in g}

    def scale(node: ir.Node, index: int, suffix: str, factor: np.ndarray) -> None:
        """Multiply input `index` of `node` by `factor`, copying it first when shared."""
        value = node.inputs[index]
        a = _weight(value)
        if value is None or a is None:
            raise GraphkitError(f"equalization: input {index} of {node.name} is not a weight")
        if n_uses(value) > 1:
            new = f"{node.name}_{suffix}"
            if new in g.initializers:
                raise GraphkitError(f"equalization: initializer name {new} already exists")
            value = add_initializer(g, a, new)
            node.replace_input_with(index, value)
        value.const_value = as_tensor((a * factor).astype(a.dtype), name_of(value))

    def width(node: ir.Node) -> tuple[int, ...]:
        w = _weight(node.inputs[1])
        if w is None:
            raise GraphkitError(f"equalization: the weight of {node.name} is not an initializer")
        return w.shape

    clips: list[tuple[ir.Node, np.ndarray]] = []
    for e in eq:
        missing = [n for n in (e["producer"], *e["consumers"], e["act"]) if n and n not in nodes]
        if missing:
            raise GraphkitError(f"equalization names node '{missing[0]}', not in the model")
        s = np.asarray(e["scales"], np.float64)
        p = nodes[e["producer"]]
        shape = width(p)
        if shape[0] != s.size:
            raise GraphkitError(f"equalization of {p.name}: {s.size} scales for another width")
        scale(p, 1, "eq_weight", (1 / s).reshape(-1, *[1] * (len(shape) - 1)))
        if len(p.inputs) > 2 and p.inputs[2] is not None:
            scale(p, 2, "eq_bias", 1 / s)
        for name in e["consumers"]:
            c = nodes[name]
            n = len(width(c))
            scale(
                c,
                1,
                "eq_weight",
                s.reshape([-1, 1, 1, 1][:n] if _group(c) > 1 else [1, -1, *[1] * (n - 2)]),
            )
        if e["act"] and nodes[e["act"]].op_type == "Clip":
            clips.append((nodes[e["act"]], s))
    bounds = [_per_channel_clip(g, clip, s) for clip, s in clips]
    for bound in bounds:  # after every copy, as the nodes' new initializers were
        if bound is not None:
            if name_of(bound) in g.initializers:
                raise GraphkitError(f"equalization: initializer name {bound.name} already exists")
            g.register_initializer(bound)
    return to_proto(out)


def _per_channel_clip(g: ir.Graph, clip: ir.Node, s: np.ndarray) -> ir.Value | None:
    """Clip(x, 0, M) on channels scaled by 1/s -> Relu(x) then Min with M / s per channel,
    in the Clip's place and under its names; returns the bound (to register), if any."""
    x, name = clip.inputs[0], clip.name or ""
    hi = clip.inputs[2] if len(clip.inputs) > 2 else None
    if hi is None:
        _replace(g, clip, [ir.Node("", "Relu", [x], name=name, num_outputs=1)])
        return None
    m = _weight(hi)
    if m is None:
        raise GraphkitError(f"equalization: the upper bound of {name} is not a constant")
    relu = ir.Node("", "Relu", [x], name=f"{name}_eq_relu", num_outputs=1)
    relu.outputs[0].name = f"{name_of(clip.outputs[0])}_eq_relu"
    bound = (float(m) / s).astype(np.float32).reshape(1, -1, 1, 1)
    value = ir.Value(
        name=f"{name}_eq_bound",
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape(bound.shape),
        const_value=as_tensor(bound, f"{name}_eq_bound"),
    )
    low = ir.Node("", "Min", [relu.outputs[0], value], name=name, num_outputs=1)
    _replace(g, clip, [relu, low])
    return value


def _replace(g: ir.Graph, node: ir.Node, new: list[ir.Node]) -> None:
    """Put `new` where `node` is, the last new node writing `node`'s (named) output."""
    old, out = node.outputs[0], new[-1].outputs[0]
    g.insert_before(node, new)
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    g.remove(node, safe=True)
    out.name, out.type, out.shape = old.name, old.type, old.shape


__all__ = ["Pair", "apply_equalization", "channel_ranges", "equalization", "find_pairs"]
