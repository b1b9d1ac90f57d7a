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
from onnx import numpy_helper

from graphkit.errors import GraphkitError
from graphkit.graph import drop_unused_weights
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
    producer = {o: n for n in qdq.graph.node for o in n.output}
    out = []
    for node in qdq.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        p = producer.get(node.input[1])
        if p is not None and p.op_type == "DequantizeLinear":
            out.append(node)
    return out


def channel_means(
    model: onnx.ModelProto, outputs: list[str], samples: Sequence[Feeds]
) -> dict[str, np.ndarray]:
    """Per-channel means (axis 1) of `outputs` over `samples`, one run per sample."""
    sess = make_session(with_outputs(model, outputs), optimize=False)
    acc: dict[str, np.ndarray] = {}
    for feeds in samples:
        for name, y in zip(outputs, sess.run(outputs, feeds)):
            y = np.asarray(y, np.float64)
            m = y.mean(axis=tuple(i for i in range(y.ndim) if i != 1))
            acc[name] = acc[name] + m if name in acc else m
    return {k: v / len(samples) for k, v in acc.items()}


def _depths(graph: onnx.GraphProto, convs: list[onnx.NodeProto]) -> dict[str, int]:
    """Depth of each Conv in `convs`: 1 + the largest depth of the `convs` upstream of it
    (graph order is topological). Convs of one depth do not read each other's outputs."""
    names = {n.name for n in convs}
    depth_of_tensor: dict[str, int] = {}
    depths: dict[str, int] = {}
    for node in graph.node:
        d = max((depth_of_tensor.get(t, 0) for t in node.input), default=0)
        if node.name in names:
            depths[node.name] = d
            d += 1
        for t in node.output:
            depth_of_tensor[t] = d
    return depths


def correct_bias(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    samples: Sequence[Feeds],
    *,
    nodes: Sequence[str] | None = None,
    passes: int = 1,
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
    x30 at the heads). `passes` > 1 repeats the sweep on what is left."""
    if not samples:
        raise GraphkitError("bias correction needs at least one sample")
    if passes < 1:
        raise GraphkitError(f"bias correction needs at least 1 pass, got {passes}")
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    graph = out.graph
    float_tensors = {t for n in float_model.graph.node for t in n.output}
    convs = [
        n
        for n in int8_convs(out)
        if n.output[0] in float_tensors and (nodes is None or n.name in set(nodes))
    ]
    if not convs:
        return out, BiasCorrection([], [], len(samples))
    inits = {i.name: i for i in graph.initializer}
    used = set(inits) | {t for n in graph.node for t in (*n.input, *n.output)}
    used |= {n.name for n in graph.node}
    outputs = [n.output[0] for n in convs]
    ref = channel_means(float_model, outputs, samples)
    biases: dict[str, np.ndarray] = {}
    for node in convs:  # give every Conv a bias of its own
        old = node.input[2] if len(node.input) > 2 else ""
        if old and old not in inits:
            raise GraphkitError(
                f"Conv '{node.name}' computes its bias '{old}' at run time; "
                "bias correction needs a constant bias"
            )
        name, i = f"{node.name}_bias_corrected", 1
        while name in used:
            name, i = f"{node.name}_bias_corrected_{i}", i + 1
        used.add(name)
        channels = ref[node.output[0]].shape
        value = numpy_helper.to_array(inits[old]).astype(np.float32) if old else None
        if value is None:
            value = np.zeros(channels, np.float32)
        if value.shape != channels:
            raise GraphkitError(
                f"Conv '{node.name}' has {value.size} biases but {channels[0]} output channels"
            )
        biases[name] = value
        if len(node.input) > 2:
            node.input[2] = name
        else:
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
    # the measuring model reads the biases as inputs: one session for every step
    probe = with_outputs(out, outputs)
    probe.graph.input.extend(
        onnx.helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, list(v.shape))
        for b, v in biases.items()
    )
    depths = _depths(graph, convs)
    levels = sorted(set(depths.values()))
    by_level = [[n for n in convs if depths[n.name] == level] for level in levels]
    # one part per depth: each sweep costs one forward pass per sample, not one per depth;
    # a corrected Conv's kept output moves by its bias change, so later parts read
    # exactly what the corrected model computes
    parts = Segments(probe, [[n.output[0] for n in layer] for layer in by_level])
    shifts = []
    for _ in range(passes):
        total, count = 0.0, 0
        envs = [{**feeds, **biases} for feeds in samples]
        for k, layer in enumerate(by_level):
            acc: dict[str, np.ndarray] = {}
            for env in envs:
                parts.run(k, env)
                for node in layer:
                    t = node.output[0]
                    y = np.asarray(env[t], np.float64)
                    m = y.mean(axis=tuple(i for i in range(y.ndim) if i != 1))
                    acc[t] = acc[t] + m if t in acc else m
            for node in layer:
                t = node.output[0]
                shift = acc[t] / len(samples) - ref[t]
                b = node.input[2]
                new = (biases[b] - shift).astype(np.float32)
                # the Conv is linear in its bias: the corrected output is the kept one
                # moved by the change, per channel (axis 1)
                step = new - biases[b]
                biases[b] = new
                total += float(np.abs(shift).sum())
                count += shift.size
                for env in envs:
                    env[t] = env[t] + step.reshape((1, -1) + (1,) * (env[t].ndim - 2))
        shifts.append(total / max(count, 1))
    graph.initializer.extend(numpy_helper.from_array(v, b) for b, v in biases.items())
    drop_unused_weights(graph, inits)  # a shared bias now copied to every reader
    make_session(out)  # refuse a model onnxruntime cannot load
    return out, BiasCorrection([n.name for n in convs], shifts, len(samples))


def bias_correct_spec(
    float_model: onnx.ModelProto, qdq: onnx.ModelProto, spec, *, samples: int = 8, passes: int = 1
) -> tuple[onnx.ModelProto, BiasCorrection]:
    """`correct_bias` on the first `samples` samples of an input spec (path or InputSpec)."""
    from graphkit.quant.collect import spec_samples

    feeds, _ = spec_samples(spec, samples)
    return correct_bias(float_model, qdq, feeds, passes=passes)


__all__ = ["BiasCorrection", "bias_correct_spec", "channel_means", "correct_bias", "int8_convs"]
