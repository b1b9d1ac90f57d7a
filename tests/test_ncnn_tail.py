"""In-graph post-processing ncnn cannot run is split off at export and run after ncnn."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_export_fixtures import calibrated_table
from tiny import model_of

from graphkit.backends.ncnn import exporter as ex
from graphkit.backends.ncnn.convert import float_inputs
from graphkit.backends.ncnn.split import blobs_of, split_tail
from graphkit.evaluators.executors import NcnnExecutor
from graphkit.runtime import ort as ort_rt


def decoded_model() -> onnx.ModelProto:
    """int32 image (1,8,8,3) -> Cast -> Transpose -> conv -> relu -> conv (heads "h") ->
    a decoding tail: Transpose to NHWC, GatherND of three fixed positions (as TF exports
    such as MoveNet do), Mul by a constant."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
        "w2": rng.normal(0, 0.3, (2, 4, 1, 1)).astype(np.float32),
        "scale": np.array(0.01, np.float32),
        "at": np.array([[0, 1, 2], [0, 5, 7], [0, 3, 3]], np.int64),
        "k": np.array(2.0, np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        n("Mul", ["f", "scale"], ["s"]),
        n("Transpose", ["s"], ["x"], perm=[0, 3, 1, 2]),
        n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["h"], name="head"),
        n("Transpose", ["h"], ["hn"], perm=[0, 2, 3, 1]),
        n("GatherND", ["hn", "at"], ["g"]),
        n("Mul", ["g", "k"], ["y"]),
    ]
    return model_of(
        nodes, [("image", [1, 8, 8, 3], TensorProto.INT32)], [("y", [3, 2])], inits, opset=13
    )


def test_the_tail_is_what_follows_the_last_weighted_layers():
    parts = split_tail(decoded_model())
    assert parts is not None and parts.cut == ["h"]
    assert [n.op_type for n in parts.tail.graph.node] == ["Transpose", "GatherND", "Mul"]
    assert [o.name for o in parts.head.graph.output] == ["h"]
    feeds = {"image": np.random.default_rng(1).integers(0, 255, (1, 8, 8, 3), dtype=np.int32)}
    h = ort_rt.run(parts.head, feeds)["h"]
    np.testing.assert_array_equal(
        ort_rt.run(parts.tail, {"h": h})["y"], ort_rt.run(decoded_model(), feeds)["y"]
    )


def test_a_model_whose_last_node_is_weighted_has_no_tail():
    model = decoded_model()
    del model.graph.node[6:]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
    assert split_tail(model) is None


def test_an_integer_image_read_through_a_cast_becomes_a_float_input():
    model = decoded_model()
    fixed = float_inputs(model)
    assert fixed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "Cast" not in [n.op_type for n in fixed.graph.node]
    x = np.random.default_rng(2).integers(0, 255, (1, 8, 8, 3))
    np.testing.assert_array_equal(
        ort_rt.run(fixed, {"image": x.astype(np.float32)})["y"],
        ort_rt.run(model, {"image": x.astype(np.int32)})["y"],
    )
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT32  # untouched


@pytest.mark.usefixtures("pnnx_installed")
def test_export_splits_off_the_tail_and_ncnn_plus_tail_give_the_models_outputs(tmp_path):
    model = decoded_model()
    rng = np.random.default_rng(3)
    samples = [{"image": rng.integers(0, 255, (1, 8, 8, 3), dtype=np.int32)} for _ in range(6)]
    table = calibrated_table(model, samples, method="minmax")
    ex.export(table, model, tmp_path, samples=lambda: iter(samples), compare_samples=2)
    d = tmp_path / "ncnn"
    tail = onnx.load(d / "model.tail.onnx")
    assert blobs_of(tail) == {"h": "out0"}
    fp32, int8 = NcnnExecutor(d / "model.ncnn.param"), NcnnExecutor(d / "model.int8.param")
    assert fp32.outputs() == int8.outputs() == ["y"]
    for feeds in samples[:3]:
        want = ort_rt.run(model, feeds)["y"]
        got = fp32.run(feeds)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * np.abs(want).max())
        q = int8.run(feeds)["y"]
        cos = float(np.sum(q * want) / (np.linalg.norm(q) * np.linalg.norm(want)))
        assert cos > 0.98
