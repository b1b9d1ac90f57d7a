"""What each tensor of an ONNX model is: producing node, op type, float or not, quantized.

The diff matches tensors by name; this module says which names are comparable (float
activations produced by a real layer, not by QuantizeLinear/DequantizeLinear) and, in a
Q/DQ model, which layers actually read quantized inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx import TensorProto

from graphkit.irgraph import name_of, to_ir

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


@dataclass
class TensorInfo:
    name: str
    node: str
    op_type: str
    index: int  # position of the producing node in the graph (topological order)
    quantized: bool = False  # the producing node reads at least one dequantized input


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor that shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - custom ops: fall back to what is declared
        inferred = model
    g = inferred.graph
    types = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _produced_by(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The node writing `value` when it is an `op_type` node, else None."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def reads_dequantized(node: ir.Node) -> bool:
    """The node reads at least one DequantizeLinear output."""
    return any(_produced_by(v, "DequantizeLinear") is not None for v in node.inputs)


def float_tensors(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Float tensors produced by non-Q/DQ nodes, with their layer and whether it is quantized."""
    types = tensor_types(model)
    m = to_ir(model)
    out: dict[str, TensorInfo] = {}
    for i, node in enumerate(m.graph):
        if node.op_type in QDQ_OPS:
            continue
        quantized = reads_dequantized(node)
        for v in node.outputs:
            o = name_of(v)
            if o and types.get(o) in _FLOATS:
                out[o] = TensorInfo(o, node.name or o, node.op_type, i, quantized)
    # A graph output made by DequantizeLinear (quantizers put Q/DQ after the last layer)
    # belongs to the layer before the pair.
    for value in m.graph.outputs:
        name = name_of(value)
        dq = _produced_by(value, "DequantizeLinear")
        if name in out or dq is None:
            continue
        q = _produced_by(dq.inputs[0], "QuantizeLinear")
        layer = q.inputs[0].producer() if q is not None and q.inputs[0] is not None else None
        if layer is not None and name_of(layer.outputs[0]) in out:
            src = out[name_of(layer.outputs[0])]
            out[name] = TensorInfo(name, src.node, src.op_type, src.index, src.quantized)
    return out


def graph_outputs(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def dequantized_views(model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> DequantizeLinear(QuantizeLinear(tensor)) output, where such a pair exists.

    The diff compares what the next layers actually read: quantizers may fuse an
    activation into the pair (onnxruntime drops a Relu after Conv and lets the int8 clamp
    do it), so the raw tensor of that name is not the reference's tensor, its Q/DQ view is.
    """
    graph = to_ir(model).graph
    position = {id(n): i for i, n in enumerate(graph)}
    views: dict[str, str] = {}
    for q in graph:
        if q.op_type != "QuantizeLinear":
            continue
        # the first DequantizeLinear of this graph (not of a subgraph) reading it
        readers = [
            u.node
            for u in q.outputs[0].uses()
            if u.node.op_type == "DequantizeLinear" and id(u.node) in position
        ]
        src = q.inputs[0]
        if readers and src is not None:
            dq = min(readers, key=lambda n: position[id(n)])
            views.setdefault(name_of(src), name_of(dq.outputs[0]))
    return views
