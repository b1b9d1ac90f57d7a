"""Run only the part of a Q/DQ candidate that differs from the float model.

The sensitivity ranking scores one candidate per layer with only that layer int8:
everything upstream of it computes exactly what the float model computes. So the float
tensors where the candidate starts to differ (the layer's input and whatever its
descendants read from outside them, e.g. skip connections) are computed once per sample,
and each candidate runs from there: the nodes fed, directly or not, by a
QuantizeLinear / DequantizeLinear, the rest dropped. On the shared pose models that is
about half of each run (a layer's descendants hold 45-53 % of the model's work on
average), and the sessions are smaller too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from graphkit.quant.variants import QDQ_OPS


def boundaries(model: onnx.ModelProto, layers: Iterable[str]) -> dict[str, list[str]]:
    """Per layer (in graph order), the float tensors a candidate with only that layer int8
    starts from: what the layer and its descendants read that they do not compute (not
    initializers)."""
    nodes = list(model.graph.node)
    index = {n.name: i for i, n in enumerate(nodes) if n.name}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[str]] = {}
    for layer in sorted((x for x in layers if x in index), key=index.__getitem__):
        seen, stack = {index[layer]}, [index[layer]]
        while stack:
            for t in nodes[stack.pop()].output:
                for j in consumers.get(t, ()):
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
        made = {o for j in seen for o in nodes[j].output}
        reads = {t for j in seen for t in nodes[j].input if t and t not in made}
        out[layer] = sorted(reads - inits)
    return out


def chunks(
    bounds: dict[str, list[str]], sizes: dict[str, int], budget: int
) -> list[tuple[list[str], list[str]]]:
    """(layers, the tensors they start from) in graph order, each group's tensors at most
    `budget` bytes together (a layer alone may exceed it): neighbours share most of theirs."""
    out: list[tuple[list[str], list[str]]] = []
    layers: list[str] = []
    tensors: set[str] = set()
    for layer, reads in bounds.items():
        grown = tensors | set(reads)
        if layers and sum(sizes.get(t, 0) for t in grown) > budget:
            out.append((layers, sorted(tensors)))
            layers, grown = [], set(reads)
        layers.append(layer)
        tensors = grown
    if layers:
        out.append((layers, sorted(tensors)))
    return out


def suffix_model(
    candidate: onnx.ModelProto,
    outputs: Sequence[str],
    available: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
) -> tuple[onnx.ModelProto | None, list[str], list[str]] | None:
    """(model, its inputs, the `outputs` it computes): the candidate's nodes downstream of
    its Q/DQ nodes, fed from `available` (name -> an example array); no model where it
    changes none of `outputs`; None where it reads anything else or has subgraphs (their
    outer-scope reads are not tracked).
    `dtypes`: the element types of `outputs`."""
    graph = candidate.graph
    changed: set[str] = set()
    affected = []
    for node in graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            return None
        if node.op_type in QDQ_OPS or any(t in changed for t in node.input if t):
            affected.append(node)
            changed.update(o for o in node.output if o)
    outs = [o for o in outputs if o in changed]
    if not outs:  # scores nothing it changes (e.g. an unscored head): nothing to run
        return None, [], []
    needed, kept = set(outs), []
    for node in reversed(affected):  # only what the scored outputs need
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(t for t in node.input if t)
    kept.reverse()
    made = {o for n in kept for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    inputs = sorted({t for n in kept for t in n.input if t and t not in made and t not in inits})
    if any(t not in available for t in inputs):
        return None
    part = helper.make_graph(
        kept,
        f"{graph.name}_suffix",
        [_info(t, available[t].dtype) for t in inputs],
        [_info(o, dtypes[o]) for o in outs],
        [inits[t] for t in sorted(needed & inits.keys())],
    )
    model = helper.make_model(part, opset_imports=list(candidate.opset_import))
    model.ir_version = candidate.ir_version
    model.functions.extend(candidate.functions)
    return model, inputs, outs


def _info(name: str, dtype: np.dtype) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None
    )


__all__ = ["boundaries", "chunks", "suffix_model"]
