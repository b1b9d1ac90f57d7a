"""A small conv chain with one planted int8-hostile layer, for sensitivity / refinement tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper
from tiny import model_of

from graphkit.quant.calibrate import build_table
from graphkit.quant.collect import collect, select_tensors
from graphkit.quant.table import CalibrationTable

INPUT = "x"


def make_model(seed: int = 0, outlier: float = 40.0) -> onnx.ModelProto:
    """x(1,3,12,12) -> conv1 -> relu -> conv2 -> relu -> conv3 (1x1) -> y.

    conv2 is the planted layer: in every output channel one weight is `outlier` while the
    others are ~N(0, 0.2), so per-channel int8 scales (outlier / 127) round most of its
    weights to zero. The outlier reads channel 0 of r1, which conv1 keeps at zero: the
    outlier adds nothing to the output, it only ruins the scale."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3))
    b1 = rng.normal(0, 0.1, 8)
    w1[0], b1[0] = 0.0, 0.0
    w2 = rng.normal(0, 0.2, (8, 8, 3, 3))
    w2[:, 0, 1, 1] = outlier
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    return model_of(
        nodes, [(INPUT, [1, 3, 12, 12])], [("y", [1, 4, 12, 12])], inits, name="planted"
    )


def feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{INPUT: rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def table_for(
    model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], method: str = "minmax"
) -> CalibrationTable:
    stats = collect(model, lambda: iter(samples), select_tensors(model), overlap=False)
    return build_table(model, stats, method)


def write_files(tmp: Path, n: int = 6) -> tuple[Path, Path]:
    """The planted model and an npz input spec for it."""
    model_path = tmp / "planted.onnx"
    onnx.save(make_model(), model_path)
    np.savez(tmp / "data.npz", **{INPUT: np.concatenate([f[INPUT] for f in feeds(n)])})
    spec = {
        "input": {"name": INPUT, "layout": "NCHW", "size": [12, 12], "dtype": "float32"},
        "source": {"type": "npz", "path": str(tmp / "data.npz")},
    }
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return model_path, spec_path
