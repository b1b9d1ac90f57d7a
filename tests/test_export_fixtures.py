"""Small models and tables shared by the exporter tests (no tests in here)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tiny import model_of

from graphkit.irgraph import name_of, to_ir
from graphkit.quant.calibrate import build_table
from graphkit.quant.collect import layer_activations, quantizable
from graphkit.quant.observers import collect_stats
from graphkit.quant.table import CalibrationTable
from graphkit.runtime.ort import run


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """NCHW 1x3x16x16: conv3x3/s2+relu, depthwise+relu, 1x1 conv, residual Add,
    conv3x3/s1 (ncnn's 6-bit rule), flatten, Gemm. Every node named."""
    rng = np.random.default_rng(seed)

    def init(name, shape, s):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    inits = [
        init("w1", (8, 3, 3, 3), 0.3),
        init("b1", (8,), 0.1),
        init("w2", (8, 1, 3, 3), 0.3),
        init("b2", (8,), 0.1),
        init("w3", (8, 8, 1, 1), 0.3),
        init("b3", (8,), 0.1),
        init("w4", (8, 8, 3, 3), 0.15),
        init("b4", (8,), 0.1),
        init("w5", (4, 8 * 8 * 8), 0.05),
        init("b5", (4,), 0.1),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        n("Relu", ["c2"], ["r2"], name="relu2"),
        n("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
        n("Add", ["c3", "r1"], ["a"], name="add"),
        n("Conv", ["a", "w4", "b4"], ["c4"], name="conv3x3", pads=[1, 1, 1, 1]),
        n("Relu", ["c4"], ["r4"], name="relu4"),
        n("Reshape", ["r4", "flat_shape"], ["f"], name="flat"),
        n("Gemm", ["f", "w5", "b5"], ["y"], name="fc", transB=1),
    ]
    return model_of(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4])], inits)


def feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def calibrated_table(
    model: onnx.ModelProto, samples, method: str = "kl-ncnn", keep_float=()
) -> CalibrationTable:
    """What `graphkit calibrate` would write, computed in-process with onnxruntime."""
    graph = to_ir(model).graph
    tensors = sorted(
        {name_of(v) for node in quantizable(graph, keep_float) for _, v in layer_activations(node)}
    )
    stats = collect_stats(run(model, f, outputs=tensors) for f in samples)
    return build_table(model, stats, method, keep_float=keep_float)


def two_conv(dynamic: bool = False) -> onnx.ModelProto:
    """x (1x3x8x8, or 1x3xHxW) -> conv1 (2 ch, 1x1) -> relu -> conv2 (2 ch, 1x1)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w2"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="conv1"),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    shape = [1, 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def golden_table() -> CalibrationTable:
    """Scales that are exact binary fractions, so golden files can be checked by hand."""
    from graphkit.quant.table import ActivationEntry, WeightEntry

    return CalibrationTable(
        method="kl-ncnn",
        activations={"x": ActivationEntry(63.5), "r1": ActivationEntry(127.0)},
        weights={
            "w1": WeightEntry([31.75, 15.875], 0, "conv1", "Conv"),
            "w2": WeightEntry([1.0, 2.0], 0, "conv2", "Conv"),
        },
    )
