"""Weight ranges: symmetric absmax per output channel (or per tensor).

The output-channel axis depends on the layer: Conv weights are KCRS (axis 0; a depthwise
Conv has one output channel per group, so per channel == per group), ConvTranspose
weights are CKRS (axis 1), Gemm's B is (N, K) with transB=1 (axis 0) and (K, N) without
(axis 1), MatMul's B is (..., K, N) (last axis).
"""

from __future__ import annotations

import numpy as np
import onnx

from graphkit.errors import GraphkitError

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_amax(w: np.ndarray, axis: int = 0, per_channel: bool = True) -> np.ndarray:
    """max |w| over every axis but `axis` (shape (w.shape[axis],)), or a 1-element array."""
    w = np.asarray(w)
    if w.size == 0:
        raise GraphkitError("cannot take the range of an empty weight tensor")
    a = np.abs(w.astype(np.float32, copy=False))
    if not per_channel or w.ndim == 0:
        return np.array([float(a.max())], dtype=np.float64)
    axis = axis % w.ndim
    others = tuple(i for i in range(w.ndim) if i != axis)
    return a.max(axis=others).astype(np.float64) if others else a.astype(np.float64)


def weight_axis(node: onnx.NodeProto, weight_ndim: int, input_index: int = 1) -> int:
    """The output-channel axis of a quantized node's weight input."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        if input_index == 0:  # a constant A: quantize per row of A^T ... keep per-tensor axis
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            return 1 if trans_a else 0
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return weight_ndim - 1 if input_index == 1 else max(weight_ndim - 2, 0)
    raise GraphkitError(f"{node.op_type} is not a quantized layer type")
