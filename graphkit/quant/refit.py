"""Re-round int8 Conv weights against the inputs the int8 model gives them.

`optimize_weights` rounds each Conv on its float input x: min ||W x - Q x||. In the int8
model the Conv reads x~, its input after every upstream layer's rounding and its own
activation Q/DQ, and what should match FP32 is W x. So here, Conv by Conv in depth order
(each measured with the Convs upstream already re-rounded), the float weights that best
map x~ to W x are solved for, then rounded on the layer's own grid (GPTQ):

    W* = W C H^-1,  C = sum x x~^T,  H = sum x~ x~^T   (least squares, ridge towards W)
    ||W x - Q x~||^2 = ||W x - W* x~||^2 + (W* - Q) H (W* - Q)^T

Much of an upstream layer's error is a fixed linear map of its input, so the next layer
can undo part of it (asymmetric calibration, as in GPTAQ, Li et al. 2025). A Conv keeps
its current integers where they have the lower error. The scales do not change: the
result is new integers on the plan's grid.

The float and the int8 model run part by part (`Segments`, one part per depth, the int8
weights fed as inputs so a re-rounded Conv runs with its new weights downstream): one
forward pass of each per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import n_uses, name_of, to_ir, to_proto
from graphkit.quant.bias import _depths, _int8_convs
from graphkit.quant.deploy import channel_scales
from graphkit.quant.refine import (
    _conv_geometry,
    _gptq,
    _least_squares,
    _patch_index,
    _patches,
    _rounding_error,
)
from graphkit.quant.table import CalibrationTable
from graphkit.runtime.segments import Segments

Feeds = dict[str, np.ndarray]


@dataclass
class Refit:
    """One Conv: output squared error on the sampled patches (against W x, the FP32
    output) with its old integers and with the chosen ones."""

    node: str
    error_before: float
    error_after: float


@dataclass
class _Layer:
    node: ir.Node
    reads: str  # the Conv's input in the int8 model
    float_reads: str  # ... in the float model
    weight: np.ndarray  # FP32 weights (groups, rows, cols)
    q: np.ndarray  # current integers, same shape
    scale: np.ndarray  # (groups, rows)
    geo: dict
    feed: str  # the graph input the int8 model reads the Conv's weights from
    shape: tuple[int, ...]  # the weight's


def refit_weights(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    samples: Sequence[Feeds],
    *,
    damp: float = 0.01,
    patches_per_sample: int = 1024,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[Refit]]:
    """New integers (node name -> int array in the weight's shape) for the int8 Convs of
    `qdq` (a Q/DQ model of `float_model`, weights as int8 initializers + DequantizeLinear,
    per output channel), each fitted to its int8 input (module doc); only Convs whose
    integers changed are returned."""
    if not samples:
        raise GraphkitError("re-rounding weights needs at least one sample")
    out = to_ir(qdq)
    graph = out.graph
    floats = {n.name: n for n in float_model.graph.node if n.name}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    layers: list[_Layer] = []
    for node in _int8_convs(graph):
        layer = _layer(node, floats, float_inits)
        if layer is not None:
            layers.append(layer)
    if not layers:
        return {}, []
    for layer in layers:  # the int8 weights become inputs: fed anew once re-rounded
        feed = ir.Value(name=layer.feed, type=ir.TensorType(ir.DataType.FLOAT))
        graph.inputs.append(feed)
        layer.node.replace_input_with(1, feed)
    depths = _depths(graph, [layer.node for layer in layers])
    levels = sorted(set(depths.values()))
    groups = [[x for x in layers if depths[x.node.name or ""] == d] for d in levels]
    probe = to_proto(out)
    int8_parts = Segments(probe, [[x.reads for x in g] for g in groups])
    float_parts = Segments(float_model, [[x.float_reads for x in g] for g in groups])
    values = {x.feed: _dequantized(x) for x in layers}
    int8_envs = [{**feeds, **values} for feeds in samples]
    float_envs = [dict(feeds) for feeds in samples]
    rng = np.random.default_rng(seed)
    changed: dict[str, np.ndarray] = {}
    report = []
    for k, group in enumerate(groups):
        h: dict[int, np.ndarray] = {}
        c: dict[int, np.ndarray] = {}
        m: dict[int, np.ndarray] = {}
        mq: dict[int, np.ndarray] = {}
        n: dict[int, int] = {}
        for fenv, qenv in zip(float_envs, int8_envs):
            float_parts.run(k, fenv)
            int8_parts.run(k, qenv)
            for i, x in enumerate(group):
                a, b = np.asarray(fenv[x.float_reads]), np.asarray(qenv[x.reads])
                if a.ndim != 4 or a.shape != b.shape:
                    continue
                index = _patch_index(a.shape, x.geo, patches_per_sample, rng)
                p, pq = _patches(a, x.geo, index), _patches(b, x.geo, index)
                pqt = pq.transpose(0, 2, 1)
                h[i] = h.get(i, 0) + np.matmul(pqt, pq).astype(np.float64)
                c[i] = c.get(i, 0) + np.matmul(p.transpose(0, 2, 1), pq).astype(np.float64)
                m[i] = m.get(i, 0) + p.sum(axis=1, dtype=np.float64)
                mq[i] = mq.get(i, 0) + pq.sum(axis=1, dtype=np.float64)
                n[i] = n.get(i, 0) + p.shape[1]
        for i, x in enumerate(group):
            if i not in h:
                continue
            # centred: the mean of the error is bias correction's, done after
            h[i] -= mq[i][:, :, None] * mq[i][:, None, :] / n[i]
            c[i] -= m[i][:, :, None] * mq[i][:, None, :] / n[i]
            target = _least_squares(
                x.weight, h[i], c[i], float(__import__("os").environ.get("LSD", damp))
            )
            q = _gptq(target, h[i], x.scale, damp)
            before = _rounding_error(x.q, x.scale, target, h[i])
            after = _rounding_error(q, x.scale, target, h[i])
            better = after < before
            if not better.any():
                continue
            x.q = np.where(better[:, None, None], q, x.q)
            changed[x.node.name or ""] = x.q
            report.append(
                Refit(
                    x.node.name or "", float(before.sum()), float(np.minimum(before, after).sum())
                )
            )
            new = _dequantized(x)
            for qenv in int8_envs:  # read by the parts after this one
                if x.feed in qenv:
                    qenv[x.feed] = new
    shapes = {x.node.name: x.shape for x in layers}
    return {name: q.reshape(shapes[name]) for name, q in changed.items()}, report


def _layer(node: ir.Node, floats: dict, float_inits: dict) -> _Layer | None:
    """What re-rounding one int8 Conv needs, or None where it cannot be done (a shared
    or computed weight, a per-tensor scale, no float twin, an unsupported geometry)."""
    twin = floats.get(node.name)
    dq = node.inputs[1].producer() if node.inputs[1] is not None else None
    if twin is None or dq is None or len(twin.input) < 2 or twin.input[1] not in float_inits:
        return None
    ints, scale = dq.inputs[0], dq.inputs[1]
    if ints is None or scale is None or ints.const_value is None or scale.const_value is None:
        return None
    if n_uses(node.inputs[1]) != 1 or node.inputs[0] is None:
        return None
    q = ints.const_value.numpy().astype(np.float64)
    s = scale.const_value.numpy().astype(np.float64).ravel()
    if q.ndim != 4 or s.size != q.shape[0]:
        return None
    geo = _conv_geometry(ir.serde.serialize_node(node), q.shape)
    if geo is None:
        return None
    g = geo["group"]
    w = onnx.numpy_helper.to_array(float_inits[twin.input[1]]).astype(np.float64)
    if w.shape != q.shape:
        return None
    rows = q.shape[0] // g
    return _Layer(
        node=node,
        reads=name_of(node.inputs[0]),
        float_reads=twin.input[0],
        weight=w.reshape(g, rows, -1),
        q=q.reshape(g, rows, -1),
        scale=s.reshape(g, rows),
        geo=geo,
        feed=f"{node.name}__refit_weight",
        shape=q.shape,
    )


def _dequantized(x: _Layer) -> np.ndarray:
    return (x.q * x.scale[..., None]).astype(np.float32).reshape(x.shape)


__all__ = ["Refit", "refit_weights", "with_integers"]


def with_integers(
    model: onnx.ModelProto, plan: CalibrationTable, integers: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy of `model` whose Convs named in `integers` hold those integers times the
    plan's scales as float weights (as `optimize_weights` writes its rounding)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weight_of = {n.name: n.input[1] for n in out.graph.node if n.name in integers}
    inits = {t.name: t for t in out.graph.initializer}
    for node, q in integers.items():
        name = weight_of[node]
        entry = plan.weights[name]
        array = (q * channel_scales(entry, q.ndim)).astype(np.float32)
        inits[name].CopyFrom(onnx.numpy_helper.from_array(array, name))
    return out
