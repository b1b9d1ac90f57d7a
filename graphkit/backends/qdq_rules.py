"""Backend rules on top of the generic Q/DQ insertion (graphkit.quant.qdq.insert_qdq).

TensorRT: Q/DQ on layer inputs (insert_qdq's placement) plus the residual rule: an Add
fed by a Conv output and a skip branch gets Q/DQ on the skip input only, so TensorRT
fuses Conv+Add (the Conv output is never quantized). AMCT (convert_qat_model): float
weights with a Q/DQ pair sharing scale and zero point, per-channel only on weights.
Both then get `check_qdq`: symmetric int8, positive scales, per-tensor activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphkit.backends._common import check_table
from graphkit.errors import GraphkitError
from graphkit.quant.table import QMAX, CalibrationTable

CONV_OPS = ("Conv", "ConvTranspose")


def _dq_of(graph: onnx.GraphProto, tensor: str) -> str | None:
    """Output of an existing Q -> DQ pair on `tensor`, if insert_qdq made one."""
    q_out = {
        n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor
    }
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            return n.output[0]
    return None


def residual_adds(model: onnx.ModelProto, keep_float=()) -> list[tuple[onnx.NodeProto, int]]:
    """(Add node, index of its skip input) for Adds where exactly one input comes straight
    from a Conv; when both do, the second input counts as the skip branch."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or node.name in keep_float:
            continue
        from_conv = [
            producer.get(i) is not None and producer[i].op_type in CONV_OPS for i in node.input
        ]
        if from_conv == [True, False]:
            out.append((node, 1))
        elif from_conv == [False, True]:
            out.append((node, 0))
        elif from_conv == [True, True]:
            out.append((node, 1))
    return out


def add_residual_qdq(model: onnx.ModelProto, table: CalibrationTable, keep_float=()) -> int:
    """Quantize the skip input of residual Adds in place; returns how many got Q/DQ."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    done = 0
    inserts: list[tuple[int, list[onnx.NodeProto]]] = []
    for add, k in residual_adds(model, set(keep_float) | set(table.keep_float)):
        tensor = add.input[k]
        if tensor not in table.activations:
            continue
        dq = _dq_of(g, tensor)
        if dq is None:
            scale, zp = f"{tensor}_res_scale", f"{tensor}_res_zero_point"
            g.initializer.append(
                numpy_helper.from_array(
                    np.array(max(table.activations[tensor].amax / QMAX, 1e-12), np.float32), scale
                )
            )
            g.initializer.append(numpy_helper.from_array(np.array(0, np.int8), zp))
            q, dq = f"{tensor}_res_QuantizeLinear", f"{tensor}_res_DequantizeLinear"
            nodes = [
                helper.make_node("QuantizeLinear", [tensor, scale, zp], [q], name=q),
                helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=dq),
            ]
            inserts.append((producer.get(tensor, -1), nodes))
        add.input[k] = dq
        done += 1
    for pos, nodes in sorted(inserts, key=lambda x: -x[0]):
        for j, n in enumerate(nodes):
            g.node.insert(pos + 1 + j, n)
    return done


def check_qdq(model: onnx.ModelProto, backend: str) -> None:
    """Raise if a Q/DQ violates the backend's rules (symmetric int8, positive scales,
    per-channel only on constant weights)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constant = set(inits) | {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in inits
    }
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1])
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None or not np.all(scale > 0) or not np.all(np.isfinite(scale)):
            raise GraphkitError(f"{backend}: {n.name} has a missing, zero or negative scale")
        if zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
            raise GraphkitError(
                f"{backend}: {n.name} is not symmetric int8 (zero point must be int8 0)"
            )
        if scale.size > 1 and n.input[0] not in constant:
            raise GraphkitError(f"{backend}: {n.name} is per-channel on an activation")


def tensorrt_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """TensorRT explicit-quantization ONNX: insert_qdq + the residual Add rule."""
    from graphkit.quant.qdq import insert_qdq

    check_table(table, model, keep_float)
    out = insert_qdq(model, table, keep_float=tuple(keep_float))
    add_residual_qdq(out, table, keep_float)
    check_qdq(out, "TensorRT")
    return out


def amct_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """Q/DQ ONNX for amct_onnx.convert_qat_model: float weights with Q/DQ pairs."""
    from graphkit.quant.qdq import insert_qdq

    check_table(table, model, keep_float)
    out = insert_qdq(model, table, keep_float=tuple(keep_float), weights_int8=False)
    check_qdq(out, "AMCT")
    return out


def plain_qdq(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """The generic Q/DQ ONNX (onnxruntime runs it with int8 kernels)."""
    from graphkit.quant.qdq import insert_qdq

    check_table(table, model, keep_float)
    return insert_qdq(model, table, keep_float=tuple(keep_float))
