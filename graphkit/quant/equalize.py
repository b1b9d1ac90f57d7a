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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphkit.errors import GraphkitError

MIN_RANGE = 1e-6
MAX_SCALE = 16  # never rescale a channel by more than this either way (rarely active ones)


@dataclass
class Pair:
    producer: str  # Conv node name
    act: str  # Relu / Clip node name, "" when P feeds C directly
    consumers: list[str]  # Conv node names reading the activation


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def find_pairs(model: onnx.ModelProto, skip: Sequence[str] = ()) -> list[Pair]:
    """Conv -> [Relu | Clip(0, M)] -> Conv(s) chains whose middle tensor nothing else reads."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}
    skipped = set(skip)

    def plain_conv(n: onnx.NodeProto) -> bool:
        return (
            n.op_type == "Conv"
            and bool(n.name)
            and n.name not in skipped
            and len(n.input) >= 2
            and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 4
            and (len(n.input) < 3 or not n.input[2] or n.input[2] in inits)
        )

    pairs = []
    for p in g.node:
        if not plain_conv(p) or p.output[0] in outputs:
            continue
        nxt = readers.get(p.output[0], [])
        act = None
        if len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip"):
            act = nxt[0]
            if act.op_type == "Clip" and not _clip_from_zero(act, inits):
                continue
            if act.output[0] in outputs:
                continue
            nxt = readers.get(act.output[0], [])
        if not nxt or not all(plain_conv(c) and c.input[0] == (act or p).output[0] for c in nxt):
            continue
        channels = numpy_helper.to_array(inits[p.input[1]]).shape[0]
        if any(not _takes_channels(c, inits, channels) for c in nxt):
            continue
        pairs.append(Pair(p.name, act.name if act is not None else "", [c.name for c in nxt]))
    return pairs


def _clip_from_zero(clip: onnx.NodeProto, inits) -> bool:
    """Clip whose lower bound is 0 and upper bound a constant (ReLU6)."""
    lo = clip.input[1] if len(clip.input) > 1 else ""
    hi = clip.input[2] if len(clip.input) > 2 else ""
    if not lo or lo not in inits or (hi and hi not in inits):
        return False
    return float(numpy_helper.to_array(inits[lo])) == 0.0


def _takes_channels(c: onnx.NodeProto, inits, channels: int) -> bool:
    """C reads `channels` input channels: a plain Conv, or a depthwise one (group = C)."""
    w = numpy_helper.to_array(inits[c.input[1]])
    group = _attr(c, "group", 1)
    return (group == 1 and w.shape[1] == channels) or (group == channels and w.shape[1] == 1)


def channel_ranges(
    model: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]], tensors: Sequence[str]
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
    model: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]], skip: Sequence[str] = ()
) -> list[dict]:
    """The pairs of `model` with their scales, measured on `samples`: [{producer, act,
    consumers, scales}] (the plan's `equalization` field)."""
    pairs = find_pairs(model, skip)
    if not pairs:
        return []
    nodes = {n.name: n for n in model.graph.node}
    tensor = {p.producer: nodes[p.act or p.producer].output[0] for p in pairs}
    ranges = channel_ranges(model, samples, list(tensor.values()))
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for p in pairs:
        a = np.maximum(ranges[tensor[p.producer]].astype(np.float64), MIN_RANGE)
        depthwise = all(_attr(nodes[c], "group", 1) > 1 for c in p.consumers)
        if depthwise:
            s = a / a.max()
        else:
            r = np.zeros_like(a)
            for c in p.consumers:
                w = np.abs(numpy_helper.to_array(inits[nodes[c].input[1]]))
                r = np.maximum(r, w.max(axis=tuple(i for i in range(w.ndim) if i != 1)))
            s = np.sqrt(a / np.maximum(r, MIN_RANGE))
            s = s / s.max()
        s = np.clip(s, 1 / MAX_SCALE, MAX_SCALE)
        out.append({**p.__dict__, "scales": [float(x) for x in s]})
    return out


def apply_equalization(model: onnx.ModelProto, eq: Sequence[dict]) -> onnx.ModelProto:
    """A copy of `model` with each pair's channels rescaled (module doc). Shared
    initializers are copied before they change, under names derived from the node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = {n.name: n for n in g.node}
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1

    def own(node: onnx.NodeProto, index: int, suffix: str) -> onnx.TensorProto:
        name = node.input[index]
        if uses.get(name, 0) == 1:
            return inits[name]
        new = f"{node.name}_{suffix}"
        if new in inits:
            raise GraphkitError(f"equalization: initializer name {new} already exists")
        copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]), new)
        g.initializer.append(copy)
        inits[new], uses[name], uses[new] = g.initializer[-1], uses[name] - 1, 1
        node.input[index] = new
        return inits[new]

    def scale(init: onnx.TensorProto, factor: np.ndarray) -> None:
        a = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((a * factor).astype(a.dtype), init.name))

    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    bounds: list[onnx.TensorProto] = []
    for e in eq:
        missing = [n for n in (e["producer"], *e["consumers"], e["act"]) if n and n not in nodes]
        if missing:
            raise GraphkitError(f"equalization names node '{missing[0]}', not in the model")
        s = np.asarray(e["scales"], np.float64)
        p = nodes[e["producer"]]
        w = own(p, 1, "eq_weight")
        if numpy_helper.to_array(w).shape[0] != s.size:
            raise GraphkitError(f"equalization of {p.name}: {s.size} scales for another width")
        scale(w, (1 / s).reshape(-1, *[1] * (len(w.dims) - 1)))
        if len(p.input) > 2 and p.input[2]:
            scale(own(p, 2, "eq_bias"), 1 / s)
        for name in e["consumers"]:
            c = nodes[name]
            cw = own(c, 1, "eq_weight")
            depthwise = _attr(c, "group", 1) > 1
            shape = (
                [-1, 1, 1, 1][: len(cw.dims)] if depthwise else [1, -1, *[1] * (len(cw.dims) - 2)]
            )
            scale(cw, s.reshape(shape))
        if e["act"] and nodes[e["act"]].op_type == "Clip":
            new_nodes[e["act"]], bound = _per_channel_clip(nodes[e["act"]], inits, s)
            bounds.extend(bound)
    if new_nodes:
        rebuilt = []
        for n in g.node:
            rebuilt.extend(new_nodes.get(n.name, [n]) if n.name else [n])
        del g.node[:]
        g.node.extend(rebuilt)
        g.initializer.extend(bounds)
    return out


def _per_channel_clip(
    clip: onnx.NodeProto, inits, s: np.ndarray
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Clip(x, 0, M) on channels scaled by 1/s -> Relu(x) then Min with M / s per channel."""
    hi = clip.input[2] if len(clip.input) > 2 else ""
    if not hi:
        return [helper.make_node("Relu", [clip.input[0]], [clip.output[0]], name=clip.name)], []
    m = float(numpy_helper.to_array(inits[hi]))
    relu_out = f"{clip.output[0]}_eq_relu"
    name = f"{clip.name}_eq_bound"
    bound = numpy_helper.from_array((m / s).astype(np.float32).reshape(1, -1, 1, 1), name)
    nodes = [
        helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{clip.name}_eq_relu"),
        helper.make_node("Min", [relu_out, name], [clip.output[0]], name=clip.name),
    ]
    return nodes, [bound]


__all__ = ["Pair", "apply_equalization", "channel_ranges", "equalization", "find_pairs"]
