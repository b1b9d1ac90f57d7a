"""Backend rules on top of the generic Q/DQ insertion (graphkit.quant.qdq.insert_qdq).

TensorRT: Q/DQ on layer inputs (insert_qdq's placement) plus the residual rule: an Add
fed by a Conv output and a skip branch gets Q/DQ on the skip input only, so TensorRT
fuses Conv+Add (the Conv output is never quantized). AMCT (convert_qat_model): float
weights with a Q/DQ pair sharing scale and zero point, per-channel only on weights.
Both then get `check_qdq`: symmetric int8, positive scales, per-tensor activations.
The rules and checks work on the onnx_ir graph insert_qdq edits (`add_qdq`); the public
functions take and return protobufs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.backends._common import check_table, main_readers, proto_nodes
from graphkit.errors import GraphkitError
from graphkit.irgraph import Names, add_initializer, to_ir, to_proto
from graphkit.quant.table import QMAX, CalibrationTable

CONV_OPS = ("Conv", "ConvTranspose")


def _dq_of(graph: ir.Graph, tensor: ir.Value) -> ir.Value | None:
    """Output of an existing Q -> DQ pair on `tensor` (the first DQ in graph order), if
    insert_qdq made one."""
    found = [
        dq
        for q in main_readers(tensor, graph)
        if q.op_type == "QuantizeLinear" and q.inputs[0] is tensor
        for dq in main_readers(q.outputs[0], graph)
        if dq.op_type == "DequantizeLinear" and dq.inputs[0] is q.outputs[0]
    ]
    if not found:
        return None
    if len(found) > 1:
        order = {id(n): i for i, n in enumerate(graph)}
        found.sort(key=lambda n: order[id(n)])
    return found[0].outputs[0]


def _residual_adds(graph: ir.Graph, keep_float: Iterable[str] = ()) -> list[tuple[ir.Node, int]]:
    """`residual_adds` on the IR graph."""
    keep = set(keep_float)
    out = []
    for node in graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or node.name in keep:
            continue
        from_conv = [
            v is not None and (p := v.producer()) is not None and p.op_type in CONV_OPS
            for v in node.inputs
        ]
        if from_conv == [True, False]:
            out.append((node, 1))
        elif from_conv == [False, True]:
            out.append((node, 0))
        elif from_conv == [True, True]:
            out.append((node, 1))
    return out


def residual_adds(model: onnx.ModelProto, keep_float=()) -> list[tuple[onnx.NodeProto, int]]:
    """(Add node, index of its skip input) for Adds where exactly one input comes straight
    from a Conv; when both do, the second input counts as the skip branch."""
    graph = to_ir(model).graph
    protos = proto_nodes(model, graph)
    return [(protos[id(add)], k) for add, k in _residual_adds(graph, keep_float)]


def add_residual_qdq(model: ir.Model, table: CalibrationTable, keep_float=()) -> int:
    """Quantize the skip input of residual Adds in place; returns how many got Q/DQ.

    A new pair goes right after the node writing the tensor (first in the graph for a
    graph input or initializer); an Add whose skip tensor already has a pair reads it."""
    g = model.graph
    names = Names(g)
    done = 0
    for add, k in _residual_adds(g, set(keep_float) | set(table.keep_float)):
        tensor = add.inputs[k]
        if tensor is None or tensor.name not in table.activations:
            continue
        name = tensor.name
        dq = _dq_of(g, tensor)
        if dq is None:
            amax = table.activations[name].amax
            scale = add_initializer(
                g, np.array(max(amax / QMAX, 1e-12), np.float32), names.fresh(f"{name}_res_scale")
            )
            zp = add_initializer(g, np.array(0, np.int8), names.fresh(f"{name}_res_zero_point"))
            q_name = names.fresh(f"{name}_res_QuantizeLinear")
            dq_name = names.fresh(f"{name}_res_DequantizeLinear")
            q = ir.Node("", "QuantizeLinear", [tensor, scale, zp], name=q_name, num_outputs=1)
            q.outputs[0].name = q_name
            dqn = ir.Node(
                "", "DequantizeLinear", [q.outputs[0], scale, zp], name=dq_name, num_outputs=1
            )
            dqn.outputs[0].name = dq_name
            producer = tensor.producer()
            if producer is not None and producer.graph is g:
                g.insert_after(producer, [q, dqn])
            else:
                g.insert_before(g[0], [q, dqn])
            dq = dqn.outputs[0]
        add.replace_input_with(k, dq)
        done += 1
    return done


def _init_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer (graph input or not), else None."""
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    return value.const_value.numpy()


def check_qdq(model: ir.Model, backend: str) -> None:
    """Raise if a Q/DQ violates the backend's rules (symmetric int8, positive scales,
    per-channel only on constant weights)."""
    g = model.graph

    def constant(value: ir.Value | None) -> bool:
        """An initializer or what a Q of an initializer writes."""
        if value is None:
            return False
        if value.is_initializer():
            return True
        q = value.producer()
        return (
            q is not None
            and q.graph is g
            and q.op_type == "QuantizeLinear"
            and value is q.outputs[0]
            and q.inputs[0] is not None
            and q.inputs[0].is_initializer()
        )

    for n in g:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = _init_array(n.inputs[1]) if len(n.inputs) > 1 else None
        zp = _init_array(n.inputs[2]) if len(n.inputs) > 2 else None
        if scale is None or not np.all(scale > 0) or not np.all(np.isfinite(scale)):
            raise GraphkitError(f"{backend}: {n.name} has a missing, zero or negative scale")
        if zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
            raise GraphkitError(
                f"{backend}: {n.name} is not symmetric int8 (zero point must be int8 0)"
            )
        if scale.size > 1 and not constant(n.inputs[0]):
            raise GraphkitError(f"{backend}: {n.name} is per-channel on an activation")


def _qdq_ir(
    table: CalibrationTable, model: onnx.ModelProto, keep_float, weights_int8: bool
) -> ir.Model:
    """insert_qdq's result, still as IR (for the backend rules and checks on top)."""
    from graphkit.quant.qdq import add_qdq, ensure_opset

    ir_model = to_ir(ensure_opset(model))
    # both backends take symmetric int8 only: unsigned entries are stored signed
    add_qdq(ir_model, table, tuple(keep_float), weights_int8=weights_int8, unsigned=False)
    return ir_model


def tensorrt_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """TensorRT explicit-quantization ONNX: insert_qdq + the residual Add rule."""
    check_table(table, model, keep_float)
    out = _qdq_ir(table, model, keep_float, weights_int8=True)
    add_residual_qdq(out, table, keep_float)
    check_qdq(out, "TensorRT")
    return to_proto(out)


def amct_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """Q/DQ ONNX for amct_onnx.convert_qat_model: float weights with Q/DQ pairs."""
    check_table(table, model, keep_float)
    out = _qdq_ir(table, model, keep_float, weights_int8=False)
    check_qdq(out, "AMCT")
    return to_proto(out)


def plain_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """The generic Q/DQ ONNX (onnxruntime runs it with int8 kernels)."""
    from graphkit.quant.qdq import insert_qdq

    check_table(table, model, keep_float)
    return insert_qdq(model, table, keep_float=tuple(keep_float))
