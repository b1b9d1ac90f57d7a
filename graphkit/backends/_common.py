"""What every exporter needs: check a table against its model, list the quantized layers.

An exporter must never write files for a table made for another model: `check_table`
refuses, with one sentence, tensors the model does not have and per-channel weight scales
whose count differs from the weight's channel count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import to_ir
from graphkit.model import atomic_write_bytes
from graphkit.quant.table import CalibrationTable, WeightEntry


@dataclass
class ExportedFile:
    """One written file, with what it is and the backend command that consumes it."""

    path: Path
    what: str
    command: str = ""


@dataclass
class QuantLayer:
    """A node quantized on (activation input, weight): what most backends list per layer."""

    node: ir.Node
    input: str  # the activation tensor the node is quantized on
    weight: str  # initializer name
    act_amax: float
    weight_amax: list[float]
    axis: int = 0

    @property
    def name(self) -> str:
        return self.node.name or ""


def main_readers(value: ir.Value | None, graph: ir.Graph) -> list[ir.Node]:
    """Nodes of `graph` itself (not of its subgraphs) reading `value`, once per input slot
    (a node reading it twice is listed twice)."""
    if value is None:
        return []
    return [u.node for u in value.uses() if u.node.graph is graph]


def proto_nodes(model: onnx.ModelProto, graph: ir.Graph) -> dict[int, onnx.NodeProto]:
    """id(IR node) -> the protobuf node it was read from, for a `graph` that is
    `to_ir(model).graph` (functions that hand nodes back keep returning protobufs)."""
    return {id(n): p for n, p in zip(graph, model.graph.node, strict=True)}


def check_table(
    table: CalibrationTable, model: onnx.ModelProto, keep_float: Iterable[str] = ()
) -> ir.Model:
    """Raise GraphkitError (one sentence) if the table cannot belong to this model; returns
    the model's IR for the caller's own walks (`quant_layers`)."""
    ir_model = to_ir(model)
    g = ir_model.graph
    values = {v.name for v in g.inputs} | set(g.initializers)
    values |= {v.name for node in g for v in node.outputs}
    missing = [n for n in table.activations if n not in values]
    if missing:
        raise GraphkitError(
            f"the table does not match the model: activation tensor '{missing[0]}' "
            f"(and {len(missing) - 1} more) is not in the model"
            if len(missing) > 1
            else f"the table does not match the model: activation tensor '{missing[0]}' is not in it"
        )
    for name, entry in table.weights.items():
        init = g.initializers.get(name)
        if init is None or init.const_value is None:
            raise GraphkitError(
                f"the table does not match the model: weight '{name}' is not an initializer of it"
            )
        shape = list(init.const_value.shape.numpy())
        n = len(entry.amax)
        if n != 1 and (entry.axis >= len(shape) or shape[entry.axis] != n):
            got = shape[entry.axis] if entry.axis < len(shape) else "no such axis"
            raise GraphkitError(
                f"the table does not match the model: weight '{name}' has {n} channel scales "
                f"but the model's weight has {got} channels on axis {entry.axis}"
            )
        if any(not (a >= 0.0) for a in entry.amax):
            raise GraphkitError(f"weight '{name}' in the table has a negative or NaN amax")
    names = {node.name for node in g if node.name}
    unknown = [k for k in keep_float if k not in names]
    if unknown:
        raise GraphkitError(f"--keep-float names '{unknown[0]}', which is not a node of the model")
    return ir_model


def quant_layers(
    table: CalibrationTable, model: ir.Model, keep_float: Iterable[str] = ()
) -> list[QuantLayer]:
    """Nodes with a weight entry whose activation input has a scale, minus keep-float ones.

    Order follows the graph, so indices are stable (vamc counts conv layers this way).
    """
    g = model.graph
    skip = set(keep_float) | set(table.keep_float)
    by_weight_node: dict[object, tuple[str, WeightEntry]] = {}
    for wname, w in table.weights.items():
        for node in main_readers(g.initializers.get(wname), g):
            by_weight_node[node.name or id(node)] = (wname, w)
    layers = []
    for node in g:
        key = node.name or id(node)
        if key not in by_weight_node or node.name in skip:
            continue
        wname, w = by_weight_node[key]
        act = next(
            (
                v.name
                for v in node.inputs
                if v is not None and v.name in table.activations and v.name != wname
            ),
            None,
        )
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
