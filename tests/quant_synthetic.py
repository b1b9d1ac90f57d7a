"""A small float model with every quantized layer kind, and data files for it (quant tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper
from tiny import model_of

INPUT = "x"


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def make_model(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """x(1,3,16,16) -> Conv -> Relu -> {depthwise Conv, 1x1 Conv} -> Add -> Relu ->
    ConvTranspose -> GAP -> Flatten -> {Gemm(transB) -> y, MatMul -> z}.
    The Relu output `r1` is shared by two Convs."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, 3, 3, 3))),
        _init("b1", rng.normal(0, 0.1, 8)),
        _init("w2", rng.normal(0, 0.3, (8, 1, 3, 3))),
        _init("w3", rng.normal(0, 0.3, (8, 8, 1, 1))),
        _init("w4", rng.normal(0, 0.3, (8, 4, 2, 2))),
        _init("w5", rng.normal(0, 0.3, (10, 4))),
        _init("b5", rng.normal(0, 0.1, 10)),
        _init("w6", rng.normal(0, 0.3, (4, 6))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dwconv", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "w3"], ["c3"], name="pwconv"),
        helper.make_node("Add", ["c2", "c3"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("ConvTranspose", ["r2", "w4"], ["t"], name="deconv", strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["t"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w5", "b5"], ["y"], name="fc", transB=1),
        helper.make_node("MatMul", ["f", "w6"], ["z"], name="matmul"),
    ]
    outputs = [("y", [1, 10]), ("z", [1, 6])]
    return model_of(nodes, [("x", [1, 3, 16, 16])], outputs, inits, opset, "quant_synthetic")


def sample_feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{INPUT: rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def write_data(tmp: Path, n: int = 6, seed: int = 1) -> tuple[Path, Path]:
    """The synthetic model file and an npz input spec for it, in `tmp`."""
    model_path = tmp / "synthetic.onnx"
    onnx.save(make_model(), model_path)
    stacked = np.concatenate([f[INPUT] for f in sample_feeds(n, seed)])
    np.savez(tmp / "data.npz", **{INPUT: stacked})
    spec = {
        "input": {"name": INPUT, "layout": "NCHW", "size": [16, 16], "dtype": "float32"},
        "source": {"type": "npz", "path": str(tmp / "data.npz")},
    }
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return model_path, spec_path
