"""Which tensors can never be negative, read from the graph alone.

An activation stored as uint8 over [0, amax] clamps any negative value to 0. The
calibration data shows which tensors were never negative; this module says which ones
cannot be, whatever the input: outputs of Relu, Clip / Relu6 with a lower bound >= 0,
Sigmoid, Softmax, Abs, Exp, and of ops that only move, pick, pool or join such values
(Transpose, Reshape, MaxPool, Concat, Resize, ...). A graph input cannot be proven so;
its calibration range is all there is (an image fed as raw 0..255 pixels).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from graphkit.irgraph import const_array, to_ir

ALWAYS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid", "Sqrt"}
# ops whose output values come from their first input only (moved, picked, pooled, scaled
# by nothing): non-negative in, non-negative out
KEEPS = {
    "Identity",
    "Transpose",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "Gather",
    "GatherND",
    "MaxPool",
    "AveragePool",
    "GlobalMaxPool",
    "GlobalAveragePool",
    "Resize",
    "Upsample",
    "DepthToSpace",
    "SpaceToDepth",
    "Tile",
    "Expand",
}
# ops combining several inputs: non-negative when every data input is
JOINS = {"Concat", "Max", "Min", "Add", "Mul", "Sum", "Mean"}


def _clip_floor(node: ir.Node) -> float | None:
    """The lower bound of a Clip (attribute in opset < 11, input after), None if unbounded."""
    attr = node.attributes.get("min")
    if attr is not None:
        return float(attr.as_float())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        low = const_array(node.inputs[1])
        return None if low is None else float(low.reshape(-1)[0])
    return None


def never_negative(model: onnx.ModelProto | ir.Model) -> set[str]:
    """Names of the node outputs of the main graph that no input can make negative."""
    graph = (model if isinstance(model, ir.Model) else to_ir(model)).graph
    out: set[str] = set()

    def nonneg(value: ir.Value | None) -> bool:
        if value is None:
            return False
        if value.name in out:
            return True
        array = const_array(value)
        return array is not None and array.size > 0 and bool((array >= 0).all())

    for node in graph:  # topological order: producers first
        op = node.op_type if node.domain in ("", "ai.onnx") else ""
        if op in ALWAYS:
            ok = True
        elif op == "Clip":
            floor = _clip_floor(node)
            ok = floor is not None and floor >= 0
        elif op in KEEPS:
            ok = nonneg(node.inputs[0] if node.inputs else None)
        elif op == "Pad":  # the fill value: input 2 (opset >= 11), attribute before, or 0
            fill = node.inputs[2] if len(node.inputs) > 2 else None
            value = node.attributes.get("value")
            filled = nonneg(fill) if fill is not None else value is None or value.as_float() >= 0
            ok = nonneg(node.inputs[0] if node.inputs else None) and filled
        elif op in JOINS:
            ok = bool(node.inputs) and all(nonneg(v) for v in node.inputs)
        else:
            ok = False
        if ok:
            out.update(v.name for v in node.outputs if v.name)
    return out


__all__ = ["never_negative"]
