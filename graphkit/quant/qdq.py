"""Insert QuantizeLinear / DequantizeLinear pairs from a calibration table.

The result is the explicit-quantization ONNX that TensorRT prefers and onnxruntime runs on
its CPU provider: symmetric int8 with zero point 0; activations per tensor; weights per
output channel (axis 0, axis 1 for ConvTranspose, per table entry); Q/DQ only on the inputs
of Conv, ConvTranspose, Gemm and MatMul, everything else float. An activation read by
several quantized layers gets one Q/DQ pair that they share. Layers named in keep_float
(or in the table's keep_float) and layers whose activation is missing from the table stay
float. Weights are stored as int8 initializers followed by a DequantizeLinear.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphkit.errors import GraphkitError
from graphkit.graph import drop_unused_weights
from graphkit.quant.collect import activation_inputs, initializer_names, quantizable_nodes
from graphkit.quant.table import QMAX, CalibrationTable
from graphkit.quant.weights import weight_amax, weight_axis

MIN_OPSET = 13
MIN_SCALE = 1e-12


def ensure_opset(model: onnx.ModelProto, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """The model at opset >= `opset` of the default domain (converted when older)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001
        raise GraphkitError(
            f"cannot upgrade the model from opset {current} to {opset} for Q/DQ: {exc}"
        ) from None


class _Names:
    def __init__(self, model: onnx.ModelProto):
        self.used = {i.name for i in model.graph.initializer}
        self.used |= {v.name for v in model.graph.input}
        for n in model.graph.node:
            self.used.update(n.output)
            self.used.add(n.name)

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def insert_qdq(
    model: onnx.ModelProto,
    table: CalibrationTable,
    keep_float: Sequence[str] = (),
    *,
    weights_int8: bool = True,
    per_channel: bool = True,
) -> onnx.ModelProto:
    """A copy of `model` with Q/DQ on the inputs of its quantized layers (see module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = ensure_opset(out)
    graph = out.graph
    keep = set(keep_float) | set(table.keep_float)
    known_nodes = {n.name for n in graph.node}
    for name in keep:
        if name not in known_nodes:
            raise GraphkitError(f"keep-float node '{name}' is not a node of the model")
    names = _Names(out)
    inits = {i.name: i for i in graph.initializer}
    constants = initializer_names(out)
    producer_pos = {o: i for i, n in enumerate(graph.node) for o in n.output}

    new_inits: list[TensorProto] = []
    head: list[onnx.NodeProto] = []  # Q/DQ of graph inputs and weights
    after: dict[int, list[onnx.NodeProto]] = {}  # Q/DQ placed after node i
    act_dq: dict[str, str] = {}
    weight_dq: dict[str, str] = {}

    def activation(tensor: str) -> str:
        if tensor in act_dq:
            return act_dq[tensor]
        amax = table.activations[tensor].amax
        scale = names.new(f"{tensor}_scale")
        zp = names.new(f"{tensor}_zero_point")
        new_inits.append(
            numpy_helper.from_array(np.array(max(amax / QMAX, MIN_SCALE), np.float32), scale)
        )
        new_inits.append(numpy_helper.from_array(np.array(0, np.int8), zp))
        q_out, dq_out = (
            names.new(f"{tensor}_QuantizeLinear"),
            names.new(f"{tensor}_DequantizeLinear"),
        )
        nodes = [
            helper.make_node("QuantizeLinear", [tensor, scale, zp], [q_out], name=q_out),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=dq_out),
        ]
        pos = producer_pos.get(tensor)
        (head if pos is None else after.setdefault(pos, [])).extend(nodes)
        act_dq[tensor] = dq_out
        return dq_out

    def weight(node: onnx.NodeProto, index: int) -> str:
        wname = node.input[index]
        if wname in weight_dq:
            return weight_dq[wname]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        entry = table.weights.get(wname)
        if entry is not None:
            amax = np.asarray(entry.amax, dtype=np.float64)
            axis = entry.axis
        else:
            axis = weight_axis(node, w.ndim, index) if per_channel else -1
            amax = weight_amax(w, axis=max(axis, 0), per_channel=per_channel)
        per_axis = axis >= 0 and amax.size > 1
        if per_axis and amax.size != w.shape[axis]:
            raise GraphkitError(
                f"table has {amax.size} scales for weight '{wname}' but its axis {axis} has "
                f"{w.shape[axis]} channels (table made for another model?)"
            )
        scales = (np.maximum(amax, MIN_SCALE * QMAX) / QMAX).astype(np.float32)
        if not per_axis:
            scales = scales.reshape(()) if scales.size == 1 else scales.max().reshape(())
        shape = [1] * w.ndim
        if per_axis:
            shape[axis] = -1
        scale_name = names.new(f"{wname}_scale")
        zp_name = names.new(f"{wname}_zero_point")
        new_inits.append(numpy_helper.from_array(scales, scale_name))
        new_inits.append(numpy_helper.from_array(np.zeros(scales.shape, np.int8), zp_name))
        attrs = {"axis": axis} if per_axis else {}
        dq_out = names.new(f"{wname}_DequantizeLinear")
        if weights_int8:
            q = np.clip(np.round(w / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
            qname = names.new(f"{wname}_quantized")
            new_inits.append(numpy_helper.from_array(q, qname))
            head.append(
                helper.make_node(
                    "DequantizeLinear",
                    [qname, scale_name, zp_name],
                    [dq_out],
                    name=dq_out,
                    **attrs,  # type: ignore[arg-type]
                )
            )
        else:
            q_out = names.new(f"{wname}_QuantizeLinear")
            head.append(
                helper.make_node(
                    "QuantizeLinear",
                    [wname, scale_name, zp_name],
                    [q_out],
                    name=q_out,
                    **attrs,  # type: ignore[arg-type]
                )
            )
            head.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_out, scale_name, zp_name],
                    [dq_out],
                    name=dq_out,
                    **attrs,  # type: ignore[arg-type]
                )
            )
        weight_dq[wname] = dq_out
        return dq_out

    for node in quantizable_nodes(out, sorted(keep)):
        acts = activation_inputs(node, constants)
        if not acts or any(t not in table.activations for _, t in acts):
            continue
        wpos = [1] if node.op_type in ("Conv", "ConvTranspose") else [0, 1]
        wpos = [
            i
            for i in wpos
            if i < len(node.input)
            and node.input[i] in inits
            and inits[node.input[i]].data_type
            in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
        ]
        for i, tensor in acts:
            node.input[i] = activation(tensor)
        for i in wpos:
            node.input[i] = weight(node, i)

    nodes = list(head)
    for i, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    drop_unused_weights(graph, inits)
    return out
