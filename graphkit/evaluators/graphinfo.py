"""What each tensor of an ONNX model is: producing node, op type, float or not, quantized.

The diff matches tensors by name; this module says which names are comparable (float
activations produced by a real layer, not by QuantizeLinear/DequantizeLinear) and, in a
Q/DQ model, which layers actually read quantized inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


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


def float_tensors(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Float tensors produced by non-Q/DQ nodes, with their layer and whether it is quantized."""
    types = tensor_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, TensorInfo] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type in QDQ_OPS:
            continue
        quantized = any(
            producer.get(t) is not None and producer[t].op_type == "DequantizeLinear"
            for t in node.input
        )
        for o in node.output:
            if o and types.get(o) in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                out[o] = TensorInfo(o, node.name or o, node.op_type, i, quantized)
    # A graph output made by DequantizeLinear (quantizers put Q/DQ after the last layer)
    # belongs to the layer before the pair.
    for name in graph_outputs(model):
        node = producer.get(name)
        if name in out or node is None or node.op_type != "DequantizeLinear":
            continue
        q = producer.get(node.input[0])
        layer = (
            producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        )
        if layer is not None and layer.output[0] in out:
            src = out[layer.output[0]]
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
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    views: dict[str, Any] = {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        dq = next(
            (c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None
        )
        if dq is not None:
            views.setdefault(q.input[0], dq.output[0])
    return views
