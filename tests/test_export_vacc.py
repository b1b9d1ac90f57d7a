"""VastAI vacc: vamc build YAML and the preprocessed .npz calibration set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from test_export_fixtures import golden_table, two_conv

from graphkit.backends.vacc import exporter as vacc
from graphkit.errors import GraphkitError

GOLDEN = Path(__file__).parent / "golden"


def _feeds(n):
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_build_yaml_matches_golden_and_npz_set_holds_the_inputs(tmp_path):
    data = _feeds(2)
    vacc.export(
        golden_table(), two_conv(), tmp_path, keep_float=("conv2",), samples=lambda: iter(data)
    )
    got = yaml.safe_load((tmp_path / "vacc" / "build.yaml").read_text())
    assert got == yaml.safe_load((GOLDEN / "vacc_build.yaml").read_text())
    files = sorted((tmp_path / "vacc" / "calib").glob("*.npz"))
    assert [f.suffix for f in files] == [".npz", ".npz"]
    for f, feeds in zip(files, data):
        with np.load(f) as z:
            assert set(z.files) == {"x"} and np.array_equal(z["x"], feeds["x"])
    assert (tmp_path / "vacc" / "model.onnx").exists()


@pytest.mark.parametrize(
    "method,mode",
    [
        ("minmax", "max"),
        ("percentile", "percentile"),
        ("kl-ncnn", "kl_divergence"),
        ("entropy-trt", "kl_divergence"),
        ("mse", "mse"),
    ],
)
def test_calibrate_mode_follows_our_method(method, mode):
    assert vacc.calibrate_mode(method) == mode


def test_skip_conv_layers_counts_conv_nodes_and_refuses_others():
    model = two_conv()
    assert vacc.conv_indices(model, ["conv2", "conv1"]) == [0, 1]
    with pytest.raises(GraphkitError, match="neither a Conv nor a MatMul"):
        vacc.conv_indices(model, ["relu1"])


def test_float_matmuls_are_skipped_by_their_index_among_matmuls():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [f"t{i}"], name=f"mm{i}") for i in range(1)]
        + [helper.make_node("Relu", ["t0"], ["r"], name="relu")]
        + [helper.make_node("MatMul", ["r", "w"], ["y"], name="mm1")],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert vacc.skipped_layers(model, ["mm1"]) == ([], [1])
    table = golden_table()
    table.keep_float = []
    config = vacc.build_config(table, model, checkpoint="m.onnx", keep_float=["mm1"])
    assert config["backend"]["quantize"]["skip_matmul_layers"] == [1]
    assert config["backend"]["quantize"]["skip_conv_layers"] == []


def test_variable_input_size_is_refused_with_a_reason(tmp_path):
    with pytest.raises(GraphkitError, match="variable size"):
        vacc.export(golden_table(), two_conv(dynamic=True), tmp_path)
    assert not (tmp_path / "vacc" / "build.yaml").exists()


def test_variable_input_size_takes_the_shape_of_the_calibration_samples(tmp_path):
    model = two_conv(dynamic=True)
    x = model.graph.input[0]
    dims = [d.dim_value or 8 for d in x.type.tensor_type.shape.dim]  # H, W symbolic
    feeds = {x.name: np.zeros(dims, np.float32)}
    vacc.export(golden_table(), model, tmp_path, samples=lambda: iter([feeds, feeds]))
    config = yaml.safe_load((tmp_path / "vacc" / "build.yaml").read_text())
    assert config["frontend"]["shape"] == {x.name: dims}
    assert config["dataset"]["sampler"]["get_data_num"] == 2
