"""Empirical bias correction of a Q/DQ model's int8 Convs.

Rounding weights and activations to int8 shifts the mean of a Conv's output: per output
channel, E[y_int8 - y_fp32] is not zero, and the shift accumulates through the network.
It is measured on a few samples (the Conv output itself, before any Relu/Clip that reads
it, channel axis 1: ONNX Convs are NCHW even in NHWC models, tf2onnx transposes around
them) and subtracted from each Conv's bias. Each Conv is measured with the corrections
upstream of it already made (see `correct_bias`).

Every corrected Conv gets a bias initializer of its own (tf2onnx graphs share bias
initializers between Convs; editing a shared one would correct one layer with another's
shift); a Conv without bias gets one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from graphkit.errors import GraphkitError
from graphkit.irgraph import (
    Names,
    as_tensor,
    drop_unused_initializers,
    name_of,
    only_consumer,
    reads,
    to_ir,
    to_proto,
)
from graphkit.runtime.ort import make_session, with_outputs
from graphkit.runtime.segments import Segments

Feeds = dict[str, np.ndarray]


@dataclass
class BiasCorrection:
    """What `correct_bias` did: corrected Convs and the mean |shift| per pass."""

    nodes: list[str]
    mean_abs_shift: list[float]  # per pass, mean over corrected channels of |E[int8 - fp32]|
    samples: int


def int8_convs(qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Convs of a Q/DQ model whose weight comes from a DequantizeLinear (int8 layers)."""
    graph = to_ir(qdq).graph  # its nodes in the protobuf's order
    picked = {id(n) for n in _int8_convs(graph)}
    return [proto for node, proto in zip(graph, qdq.graph.node) if id(node) in picked]


def _int8_convs(graph: ir.Graph) -> list[ir.Node]:
    """`int8_convs` on the IR."""
    out = []
    for node in graph:
        if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        producer = node.inputs[1].producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            out.append(node)
    return out


def channel_means(
    model: onnx.ModelProto, outputs: list[str], samples: Sequence[Feeds]
) -> dict[str, np.ndarray]:
    """Per-channel means (axis 1) of `outputs` over `samples`, one run per sample.

    Taken inside onnxruntime in float64 (`_with_channel_means`, an optimized session):
    copying every Conv output of a full-resolution model out cost 6x its inference, and
    a float32 mean (GlobalAveragePool) is off by 3e-4 of the values, a tenth of the
    shifts being measured."""
    probe, means = _with_channel_means(model, outputs)
    sess = make_session(probe)
    runs = [sess.run(means, feeds) for feeds in samples]
    return {name: np.mean([r[k] for r in runs], axis=0) for k, name in enumerate(outputs)}


def _with_channel_means(
    model: onnx.ModelProto, outputs: list[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose outputs are the float64 per-channel means of `outputs`
    (Cast, Reshape to (N, C, -1), ReduceMean over axes 0 and 2), and their names."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 0)
    names = Names()
    names.taken = {t for n in copy.graph.node for t in n.output}
    names.taken |= {t.name for t in (*copy.graph.input, *copy.graph.initializer)}
    fresh = names.fresh

    def constant(base: str, values: list[int]) -> str:
        name = fresh(base)
        copy.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    shape, axes = constant("channel_mean_shape", [0, 0, -1]), [0, 2]
    means = []
    for name in outputs:
        wide, flat, out = (fresh(f"{name}_{s}") for s in ("float64", "flat", "channel_mean"))
        if opset >= 18:  # ReduceMean's axes became an input
            mean = helper.make_node("ReduceMean", [flat, constant("axes", axes)], [out], keepdims=0)
        else:
            mean = helper.make_node("ReduceMean", [flat], [out], axes=axes, keepdims=0)
        copy.graph.node.extend(
            [
                helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.DOUBLE),
                helper.make_node("Reshape", [wide, shape], [flat]),
                mean,
            ]
        )
        means.append(out)
    return with_outputs(copy, means), means


def _channel_mean(y: np.ndarray) -> np.ndarray:
    """Mean over every axis but 1, accumulated in float64 without a float64 copy."""
    n, c = y.shape[0], y.shape[1]
    return y.reshape(n, c, -1).sum(axis=(0, 2), dtype=np.float64) / (y.size / c)


# a channel whose activation passes fewer than this share of positions unclipped keeps
# its bias under `through_activation`: the division by that share would amplify noise
MIN_ACTIVE = 0.01


def _activation(value: ir.Value) -> tuple[float, float, ir.Value] | None:
    """(low, high, output) of the Relu or constant Clip that alone reads `value`, else None."""
    node = only_consumer(value)
    if node is None or node.inputs[0] is not value:
        return None
    if node.op_type == "Relu":
        return 0.0, np.inf, node.outputs[0]
    if node.op_type != "Clip":
        return None
    # opset < 11 has them as attributes, later opsets as optional inputs
    limits = [node.attributes.get_float("min", -np.inf), node.attributes.get_float("max", np.inf)]
    for k, bound in enumerate(node.inputs[1:3]):
        if bound is None:
            continue
        if bound.const_value is None:
            return None  # a bound computed at run time
        limits[k] = float(bound.const_value.numpy())
    return limits[0], limits[1], node.outputs[0]


def _clipped(y: np.ndarray, bounds: tuple[float, float, ir.Value] | None):
    """Per-channel means (axis 1) of the activation of `y` and of its unclipped share."""
    if bounds is None:
        return _channel_mean(y), np.ones(y.shape[1])
    low, high, _ = bounds
    inside = (y > low) & (y < high)
    return _channel_mean(np.clip(y, low, high)), _channel_mean(inside.astype(np.float32))


def _depths(graph: ir.Graph, convs: list[ir.Node]) -> dict[str, int]:
    """Depth of each Conv in `convs`: 1 + the largest depth of the `convs` upstream of it
    (graph order is topological). Convs of one depth do not read each other's outputs."""
    wanted = {id(n) for n in convs}
    depth_of: dict[ir.Value, int] = {}
    depths: dict[str, int] = {}
    for node in graph:
        d = max((depth_of.get(v, 0) for v in reads(node)), default=0)
        if id(node) in wanted:
            depths[node.name or ""] = d
            d += 1
        for v in node.outputs:
            depth_of[v] = d
    return depths


def correct_bias(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    samples: Sequence[Feeds],
    *,
    nodes: Sequence[str] | None = None,
    passes: int = 1,
    through_activation: bool = False,
) -> tuple[onnx.ModelProto, BiasCorrection]:
    """A copy of the Q/DQ model `qdq` (from `insert_qdq(float_model, ...)`) whose int8
    Convs' biases cancel the mean shift of their outputs against `float_model` on
    `samples`; `nodes` limits the corrected Convs.

    Convs are corrected depth by depth (all Convs of one depth together: none reads
    another's output), each measured with every Conv upstream already corrected. The
    model runs part by part (`Segments`, one part per depth): a corrected Conv's output
    is run again alone with its new bias, so each sweep is about one forward pass per sample.
    Correcting all Convs from one measure (Jacobi) diverges: each downstream shift
    then counts the upstream ones again (posenet: mean |shift| 0.09 -> 0.18 at depth 4,
    x30 at the heads). `passes` > 1 repeats the sweep on what is left.

    through_activation=True: a Conv read only by a Relu or a constant Clip is corrected
    for the mean shift of that activation's output, what the next layers see (`_clipped`),
    not of its own: positions the activation clips pass no shift on, and their int8
    error should not move the bias of the others."""
    if not samples:
        raise GraphkitError("bias correction needs at least one sample")
    if passes < 1:
        raise GraphkitError(f"bias correction needs at least 1 pass, got {passes}")
    out = to_ir(qdq)
    graph = out.graph
    float_tensors = {name_of(v) for n in to_ir(float_model).graph for v in n.outputs}
    wanted = None if nodes is None else set(nodes)
    convs = [
        n
        for n in _int8_convs(graph)
        if name_of(n.outputs[0]) in float_tensors and (wanted is None or n.name in wanted)
    ]
    if not convs:
        return to_proto(out), BiasCorrection([], [], len(samples))
    outputs = [name_of(n.outputs[0]) for n in convs]
    bounds = {
        t: _activation(n.outputs[0]) if through_activation else None for t, n in zip(outputs, convs)
    }
    # what is compared with FP32: the activation's output where there is one
    compared = {t: name_of(b[2]) if b is not None else t for t, b in bounds.items()}
    means = channel_means(float_model, list(dict.fromkeys(compared.values())), samples)
    ref = {t: means[compared[t]] for t in outputs}
    biases = _own_biases(graph, convs, ref)
    # the measuring model reads the biases as inputs: one session for every step
    probe = with_outputs(to_proto(out), outputs)
    depths = _depths(graph, convs)
    levels = sorted(set(depths.values()))
    by_level = [[n for n in convs if depths[n.name or ""] == level] for level in levels]
    # one part per depth: each sweep costs one forward pass per sample, not one per depth;
    # a corrected Conv's kept output moves by its bias change, so later parts read
    # exactly what the corrected model computes
    parts = Segments(probe, [[name_of(n.outputs[0]) for n in layer] for layer in by_level])
    values = {name_of(v): a for v, a in biases.items()}
    shifts = []
    for _ in range(passes):
        total, count = 0.0, 0
        envs = [{**feeds, **values} for feeds in samples]
        for k, layer in enumerate(by_level):
            acc: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
                name_of(n.outputs[0]): [] for n in layer
            }
            for env in envs:
                parts.run(k, env)
                for t, got in acc.items():
                    got.append(_clipped(env[t], bounds[t]))
            for node in layer:
                t = name_of(node.outputs[0])
                mean, active = (np.mean(x, axis=0) for x in zip(*acc[t]))
                # the bias moves the activation's mean by its share of unclipped positions
                # (to first order): divide by it, and leave channels that are almost
                # never unclipped as they are
                shift = np.where(
                    active >= MIN_ACTIVE, (mean - ref[t]) / np.maximum(active, MIN_ACTIVE), 0.0
                )
                bias = node.inputs[2]
                assert bias is not None  # every corrected Conv got one (_own_biases)
                b = name_of(bias)
                new = (values[b] - shift).astype(np.float32)
                # the Conv is linear in its bias: the corrected output is the kept one
                # moved by the change, per channel (axis 1)
                step = new - values[b]
                values[b] = new
                total += float(np.abs(shift).sum())
                count += shift.size
                for env in envs:  # in place: onnxruntime's outputs are the caller's arrays
                    env[t] += step.reshape((1, -1) + (1,) * (env[t].ndim - 2))
        shifts.append(total / max(count, 1))
    # the biases become initializers; a shared one, now copied to every reader, goes
    graph.inputs[:] = [v for v in graph.inputs if v not in biases]
    for v in biases:
        v.const_value = as_tensor(values[name_of(v)], name_of(v))
        graph.register_initializer(v)
    drop_unused_initializers(graph)
    corrected = to_proto(out)
    make_session(corrected)  # refuse a model onnxruntime cannot load
    return corrected, BiasCorrection([n.name or "" for n in convs], shifts, len(samples))


def _own_biases(
    graph: ir.Graph, convs: list[ir.Node], ref: dict[str, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """Give every Conv a bias of its own, a new graph input (until the end of the
    correction) holding the old bias (zeros without one); returns them with their values."""
    taken = set(graph.initializers) | {n.name for n in graph}
    taken |= {name_of(v) for n in graph for v in (*n.inputs, *n.outputs) if v is not None}
    biases: dict[ir.Value, np.ndarray] = {}
    for node in convs:
        old = node.inputs[2] if len(node.inputs) > 2 else None
        if old is not None and (not old.is_initializer() or old.const_value is None):
            raise GraphkitError(
                f"Conv '{node.name}' computes its bias '{old.name}' at run time; "
                "bias correction needs a constant bias"
            )
        name, i = f"{node.name}_bias_corrected", 1
        while name in taken:
            name, i = f"{node.name}_bias_corrected_{i}", i + 1
        taken.add(name)
        channels = ref[name_of(node.outputs[0])].shape
        if old is None or old.const_value is None:
            value = np.zeros(channels, np.float32)
        else:
            value = old.const_value.numpy().astype(np.float32)
        if value.shape != channels:
            raise GraphkitError(
                f"Conv '{node.name}' has {value.size} biases but {channels[0]} output channels"
            )
        bias = ir.Value(
            name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(value.shape)
        )
        graph.inputs.append(bias)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, bias)
        biases[bias] = value
    return biases


def bias_correct_spec(
    float_model: onnx.ModelProto, qdq: onnx.ModelProto, spec, *, samples: int = 8, passes: int = 1
) -> tuple[onnx.ModelProto, BiasCorrection]:
    """`correct_bias` on the first `samples` samples of an input spec (path or InputSpec)."""
    from graphkit.quant.collect import spec_samples

    feeds, _ = spec_samples(spec, samples)
    return correct_bias(float_model, qdq, feeds, passes=passes)


__all__ = ["BiasCorrection", "bias_correct_spec", "channel_means", "correct_bias", "int8_convs"]
