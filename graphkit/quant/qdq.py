"""Insert QuantizeLinear / DequantizeLinear pairs from a calibration table.

The result is the explicit-quantization ONNX that TensorRT prefers and onnxruntime runs on
its CPU provider: symmetric int8 with zero point 0 (an activation the table marks
`unsigned`: uint8 with zero point 0 over [0, amax], unless `unsigned=False`, which
TensorRT and AMCT need); activations per tensor; weights per
output channel (axis 0, axis 1 for ConvTranspose, per table entry); Q/DQ only on the inputs
of Conv, ConvTranspose, Gemm and MatMul, everything else float. An activation read by
several quantized layers gets one Q/DQ pair that they share. Layers named in keep_float
(or in the table's keep_float) and layers whose activation is missing from the table stay
float. Weights are stored as int8 initializers followed by a DequantizeLinear.

The edits are made on the onnx_ir graph; `insert_qdq` takes and returns protobufs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import add_initializer, drop_unused_initializers, to_ir, to_proto
from graphkit.quant.collect import layer_activations
from graphkit.quant.table import QMAX, CalibrationTable
from graphkit.quant.weights import QUANTIZED_OPS, weight_amax, weight_axis

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


_FLOAT = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


class _Names:
    """Fresh names: initializers, graph inputs, node outputs and node names are taken."""

    def __init__(self, graph: ir.Graph):
        self.used = set(graph.initializers) | {v.name or "" for v in graph.inputs}
        for node in graph:
            self.used.update(v.name or "" for v in node.outputs)
            self.used.add(node.name or "")

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _node(op_type: str, inputs: list[ir.Value], name: str, axis: int | None = None) -> ir.Node:
    """A Q or DQ node whose output tensor is named like the node."""
    attrs = [] if axis is None else [ir.AttrInt64("axis", axis)]
    node = ir.Node("", op_type, inputs, attributes=attrs, name=name, num_outputs=1)
    node.outputs[0].name = name
    return node


def _float_weights(node: ir.Node) -> list[int]:
    """Input positions of a quantized node holding float initializers."""
    positions = [1] if node.op_type in ("Conv", "ConvTranspose") else [0, 1]
    return [
        i
        for i in positions
        if i < len(node.inputs)
        and (v := node.inputs[i]) is not None
        and v.is_initializer()
        and v.const_value is not None
        and v.const_value.dtype in _FLOAT
    ]


class _Inserter:
    """Q/DQ nodes and initializers for one graph, each tensor's pair made once and shared.

    New nodes wait until `place`: pairs of graph inputs and weights go first, in the order
    they were made; an activation's pair goes right after the node writing it.
    """

    def __init__(
        self,
        graph: ir.Graph,
        table: CalibrationTable,
        weights_int8: bool,
        per_channel: bool,
        unsigned: bool,
    ):
        self.graph, self.table = graph, table
        self.weights_int8, self.per_channel, self.unsigned = weights_int8, per_channel, unsigned
        self.names = _Names(graph)
        self.head: list[ir.Node] = []
        self.after: dict[ir.Node, list[ir.Node]] = {}
        self.dq: dict[str, ir.Value] = {}  # tensor name -> output of its DequantizeLinear

    def _init(self, array: np.ndarray, hint: str) -> ir.Value:
        return add_initializer(self.graph, array, self.names.new(hint))

    def activation(self, tensor: ir.Value) -> ir.Value:
        name = tensor.name or ""
        if name in self.dq:
            return self.dq[name]
        entry = self.table.activations[name]
        unsigned = entry.unsigned and self.unsigned
        step = entry.unsigned_scale if unsigned else entry.scale
        scale = self._init(np.array(max(step, MIN_SCALE), np.float32), f"{name}_scale")
        zp = self._init(np.array(0, np.uint8 if unsigned else np.int8), f"{name}_zero_point")
        q_name = self.names.new(f"{name}_QuantizeLinear")
        dq_name = self.names.new(f"{name}_DequantizeLinear")
        q = _node("QuantizeLinear", [tensor, scale, zp], q_name)
        dq = _node("DequantizeLinear", [q.outputs[0], scale, zp], dq_name)
        producer = tensor.producer()
        (self.head if producer is None else self.after.setdefault(producer, [])).extend([q, dq])
        self.dq[name] = dq.outputs[0]
        return dq.outputs[0]

    def weight(self, node: ir.Node, index: int) -> ir.Value:
        value = node.inputs[index]
        assert value is not None and value.const_value is not None
        wname = value.name or ""
        if wname in self.dq:
            return self.dq[wname]
        w = value.const_value.numpy().astype(np.float32)
        axis, amax = self._weight_range(node, index, wname, w)
        per_axis = axis >= 0 and amax.size > 1
        if per_axis and amax.size != w.shape[axis]:
            raise GraphkitError(
                f"table has {amax.size} scales for weight '{wname}' but its axis {axis} has "
                f"{w.shape[axis]} channels (table made for another model?)"
            )
        # a channel of zeros takes the layer's largest scale (its integers are 0 whatever
        # the scale): a tiny one makes onnxruntime's int32 bias, bias / (input scale x
        # weight scale), overflow; BatchNorm folding leaves such channels with a bias
        zero = amax <= MIN_SCALE * QMAX
        top = float(amax.max()) / QMAX if not zero.all() else 1.0
        scales = np.where(zero, top, amax / QMAX).astype(np.float32)
        if not per_axis:
            scales = scales.reshape(()) if scales.size == 1 else scales.max().reshape(())
        shape = [1] * w.ndim
        if per_axis:
            shape[axis] = -1
        scale = self._init(scales, f"{wname}_scale")
        zp = self._init(np.zeros(scales.shape, np.int8), f"{wname}_zero_point")
        attr_axis = axis if per_axis else None
        dq_name = self.names.new(f"{wname}_DequantizeLinear")
        if self.weights_int8:
            q = np.clip(np.round(w / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
            stored = self._init(q, f"{wname}_quantized")
            dq = _node("DequantizeLinear", [stored, scale, zp], dq_name, attr_axis)
            self.head.append(dq)
        else:
            q_name = self.names.new(f"{wname}_QuantizeLinear")
            qnode = _node("QuantizeLinear", [value, scale, zp], q_name, attr_axis)
            dq = _node("DequantizeLinear", [qnode.outputs[0], scale, zp], dq_name, attr_axis)
            self.head.extend([qnode, dq])
        self.dq[wname] = dq.outputs[0]
        return dq.outputs[0]

    def _weight_range(
        self, node: ir.Node, index: int, wname: str, w: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """(channel axis or -1, amax per channel): from the table, else from the weight."""
        entry = self.table.weights.get(wname)
        if entry is not None:
            return entry.axis, np.asarray(entry.amax, dtype=np.float64)
        axis = weight_axis(ir.serde.serialize_node(node), w.ndim, index) if self.per_channel else -1
        return axis, weight_amax(w, axis=max(axis, 0), per_channel=self.per_channel)

    def place(self) -> None:
        """Put the new nodes into the graph (see the class doc)."""
        g = self.graph
        for producer, nodes in self.after.items():
            g.insert_after(producer, nodes)
        if self.head:
            g.insert_before(g[0], self.head)


def add_qdq(
    model: ir.Model,
    table: CalibrationTable,
    keep_float: Sequence[str] = (),
    *,
    weights_int8: bool = True,
    per_channel: bool = True,
    unsigned: bool = True,
) -> None:
    """Insert Q/DQ into `model` in place (opset >= 13 already; see the module doc)."""
    graph = model.graph
    keep = set(keep_float) | set(table.keep_float)
    known_nodes = {n.name for n in graph}
    for name in keep:
        if name not in known_nodes:
            raise GraphkitError(f"keep-float node '{name}' is not a node of the model")
    inserter = _Inserter(graph, table, weights_int8, per_channel, unsigned)
    for node in [n for n in graph if n.op_type in QUANTIZED_OPS and n.name not in keep]:
        acts = layer_activations(node)
        if not acts or any(v.name not in table.activations for _, v in acts):
            continue
        weights = _float_weights(node)
        for i, tensor in acts:
            node.replace_input_with(i, inserter.activation(tensor))
        for i in weights:
            node.replace_input_with(i, inserter.weight(node, i))
    inserter.place()
    drop_unused_initializers(graph)


def insert_qdq(
    model: onnx.ModelProto,
    table: CalibrationTable,
    keep_float: Sequence[str] = (),
    *,
    weights_int8: bool = True,
    per_channel: bool = True,
    unsigned: bool = True,
) -> onnx.ModelProto:
    """A copy of `model` with Q/DQ on the inputs of its quantized layers (see module doc)."""
    ir_model = to_ir(ensure_opset(model))
    add_qdq(
        ir_model,
        table,
        keep_float,
        weights_int8=weights_int8,
        per_channel=per_channel,
        unsigned=unsigned,
    )
    return to_proto(ir_model)
