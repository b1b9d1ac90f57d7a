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
    with pytest.raises(GraphkitError, match="not a Conv"):
        vacc.conv_indices(model, ["relu1"])


def test_variable_input_size_is_refused_with_a_reason(tmp_path):
    with pytest.raises(GraphkitError, match="variable size"):
        vacc.export(golden_table(), two_conv(dynamic=True), tmp_path)
    assert not (tmp_path / "vacc" / "build.yaml").exists()
