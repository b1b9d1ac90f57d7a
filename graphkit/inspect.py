"""Inputs, outputs, shapes, op histogram and parameter count of a model.

Only shapes are read, so a model with gigabytes of external weights is summarized
without loading them."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from graphkit.passes.base import count_ops
from graphkit.runtime.ort import graph_input_names


def _shape(vi: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_param or d.dim_value or "?" for d in vi.type.tensor_type.shape.dim]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()


def summarize(model: onnx.ModelProto) -> dict[str, Any]:
    """Inputs, outputs (name, dtype, shape), op counts, parameter count, opset, IR."""
    real = set(graph_input_names(model))
    return {
        "ir_version": model.ir_version,
        "opset": max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        ),
        "nodes": len(model.graph.node),
        "inputs": [(i.name, _dtype(i), _shape(i)) for i in model.graph.input if i.name in real],
        "outputs": [(o.name, _dtype(o), _shape(o)) for o in model.graph.output],
        "ops": count_ops(model),
        "parameters": int(
            sum(np.prod(list(t.dims), dtype=np.int64) for t in model.graph.initializer)
        ),
    }
