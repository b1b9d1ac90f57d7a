"""The one builder of small test models: nodes, typed inputs and outputs, weights in,
a checker-valid ModelProto out (IR 8, which every runtime and pnnx read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Io = tuple[str, Sequence[int | str | None]] | tuple[str, Sequence[int | str | None], int]


def _value_info(io: Io) -> onnx.ValueInfoProto:
    name, shape, *elem = io
    return helper.make_tensor_value_info(name, elem[0] if elem else TensorProto.FLOAT, shape)


def model_of(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[Io],
    outputs: Sequence[Io],
    inits: Mapping[str, np.ndarray] | Sequence[TensorProto] = (),
    opset: int = 13,
    name: str = "tiny",
    check: bool = True,
) -> onnx.ModelProto:
    """inits: arrays by name (their dtype kept) or ready TensorProtos."""
    if isinstance(inits, Mapping):
        inits = [numpy_helper.from_array(np.asarray(a), k) for k, a in inits.items()]
    graph = helper.make_graph(
        list(nodes),
        name,
        [_value_info(i) for i in inputs],
        [_value_info(o) for o in outputs],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model
