"""What every exporter needs: check a table against its model, list the quantized layers.

An exporter must never write files for a table made for another model: `check_table`
refuses, with one sentence, tensors the model does not have and per-channel weight scales
whose count differs from the weight's channel count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from graphkit.errors import GraphkitError
from graphkit.model import atomic_write_bytes
from graphkit.quant.table import CalibrationTable


@dataclass
class ExportedFile:
    """One written file, with what it is and the backend command that consumes it."""

    path: Path
    what: str
    command: str = ""


@dataclass
class QuantLayer:
    """A node quantized on (activation input, weight): what most backends list per layer."""

    node: onnx.NodeProto
    input: str  # the activation tensor the node is quantized on
    weight: str  # initializer name
    act_amax: float
    weight_amax: list[float]
    axis: int = 0

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class ModelIndex:
    """Names and shapes of an ONNX graph, built once per export."""

    model: onnx.ModelProto
    init_shapes: dict[str, list[int]] = field(default_factory=dict)
    values: set[str] = field(default_factory=set)
    nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelIndex:
        idx = cls(model)
        g = model.graph
        idx.init_shapes = {i.name: list(i.dims) for i in g.initializer}
        idx.values = {vi.name for vi in g.input} | set(idx.init_shapes)
        for node in g.node:
            if node.name:
                idx.nodes[node.name] = node
            for out in node.output:
                idx.values.add(out)
                idx.producer[out] = node
            for inp in node.input:
                if inp:
                    idx.consumers.setdefault(inp, []).append(node)
        return idx


def check_table(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> ModelIndex:
    """Raise GraphkitError (one sentence) if the table cannot belong to this model."""
    idx = ModelIndex.of(model)
    missing = [n for n in table.activations if n not in idx.values]
    if missing:
        raise GraphkitError(
            f"the table does not match the model: activation tensor '{missing[0]}' "
            f"(and {len(missing) - 1} more) is not in the model"
            if len(missing) > 1
            else f"the table does not match the model: activation tensor '{missing[0]}' is not in it"
        )
    for name, entry in table.weights.items():
        shape = idx.init_shapes.get(name)
        if shape is None:
            raise GraphkitError(
                f"the table does not match the model: weight '{name}' is not an initializer of it"
            )
        n = len(entry.amax)
        if n != 1 and (entry.axis >= len(shape) or shape[entry.axis] != n):
            got = shape[entry.axis] if entry.axis < len(shape) else "no such axis"
            raise GraphkitError(
                f"the table does not match the model: weight '{name}' has {n} channel scales "
                f"but the model's weight has {got} channels on axis {entry.axis}"
            )
        if any(not (a >= 0.0) for a in entry.amax):
            raise GraphkitError(f"weight '{name}' in the table has a negative or NaN amax")
    unknown = [k for k in keep_float if k not in idx.nodes]
    if unknown:
        raise GraphkitError(f"--keep-float names '{unknown[0]}', which is not a node of the model")
    return idx


def quant_layers(table: CalibrationTable, idx: ModelIndex, keep_float=()) -> list[QuantLayer]:
    """Nodes with a weight entry whose activation input has a scale, minus keep-float ones.

    Order follows the graph, so indices are stable (vamc counts conv layers this way).
    """
    skip = set(keep_float) | set(table.keep_float)
    by_weight_node = {}
    for wname, w in table.weights.items():
        for node in idx.consumers.get(wname, []):
            by_weight_node[node.name or id(node)] = (wname, w)
    layers = []
    for node in idx.model.graph.node:
        key = node.name or id(node)
        if key not in by_weight_node or node.name in skip:
            continue
        wname, w = by_weight_node[key]
        act = next((i for i in node.input if i in table.activations and i != wname), None)
        if act is None:
            continue
        if not node.name:
            raise GraphkitError(
                f"a {node.op_type} node using weight '{wname}' has no name; name the nodes "
                "first (backends key their tables by node name)"
            )
        layers.append(
            QuantLayer(node, act, wname, table.activations[act].amax, list(w.amax), w.axis)
        )
    return layers


def safe_scale(amax: float, qmax: float = 127.0) -> float:
    """amax / qmax, never zero (an all-zero channel still needs a valid positive scale)."""
    return max(amax, 1e-12) / qmax


def write_all(files: Mapping[Path, bytes | str]) -> None:
    """Write every prepared file atomically (content is built first, so a failure in
    building leaves no file behind)."""
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
