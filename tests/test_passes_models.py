"""The default pipeline on real models: the shared pose nets and the onnx "light" zoo.

Each must come out smaller (or, when nothing can go, the same), valid, and computing the
same outputs: on graphkit's random sample inputs (the pipeline's own verification) and,
for the light zoo, on the input the onnx backend tests use, against their stored
reference outputs (*_output_0.pb).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphkit.pipeline import load_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
DEFAULT = ROOT / "examples" / "passes" / "default.yaml"


def backend_test_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The input onnx's backend runner feeds light models: arange(n)/n in the input shape
    (onnx/backend/test/runner generate_dummy_data with random=False)."""
    name = ort_rt.graph_input_names(model)[0]
    vi = next(i for i in model.graph.input if i.name == name)
    shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
    n = int(np.prod(shape))
    return {name: (np.arange(n).reshape(shape) / n).astype(np.float32)}


def clean(model: onnx.ModelProto):
    out, reports = run_pipeline(model, load_pipeline(DEFAULT), verify=True)
    onnx.checker.check_model(out)
    worst = max((max(r.max_abs_diff.values()) for r in reports if r.max_abs_diff), default=0.0)
    return out, worst


LIGHT_FAST = ["squeezenet", "shufflenet"]
LIGHT_SLOW = ["inception_v1", "inception_v2", "densenet121", "resnet50"]


@pytest.mark.parametrize(
    "name", LIGHT_FAST + [pytest.param(n, marks=pytest.mark.slow) for n in LIGHT_SLOW]
)
def test_light_zoo_model_shrinks_and_matches_its_reference_output(name):
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not shipped with this onnx version")
    model = onnx.load(str(path))
    new, worst = clean(model)
    assert len(new.graph.node) < len(model.graph.node)
    assert worst <= 1e-4
    feeds = backend_test_input(model)
    before = next(iter(ort_rt.run(model, feeds).values()))
    after = next(iter(ort_rt.run(new, feeds).values()))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    ref_path = LIGHT / f"light_{name}_output_0.pb"
    ref = numpy_helper.to_array(onnx.load_tensor(str(ref_path)))
    np.testing.assert_allclose(after, ref.reshape(after.shape), rtol=1e-3, atol=1e-5)


def test_light_zoo_ops_that_must_go_are_gone():
    model = onnx.load(str(LIGHT / "light_shufflenet.onnx"))
    new, _ = clean(model)
    ops = {n.op_type for n in new.graph.node}
    assert "BatchNormalization" not in ops and "ConstantOfShape" not in ops


@pytest.mark.parametrize(
    "name, must_shrink",
    [
        ("movenet-lightning", True),  # int32 image input, in-graph decoding
        pytest.param("efficientpose", True, marks=pytest.mark.slow),
        pytest.param("posenet", False, marks=pytest.mark.slow),  # nothing to remove
    ],
)
def test_pose_model_keeps_outputs_through_the_default_pipeline(assets, name, must_shrink):
    model = onnx.load(str(assets / "models" / f"{name}.onnx"))
    new, _ = clean(model)
    before, after = len(model.graph.node), len(new.graph.node)
    assert after < before if must_shrink else after <= before
    assert [o.name for o in new.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in new.graph.input] == [i.name for i in model.graph.input]
    feeds = ort_rt.sample_inputs(model, seed=7)  # other inputs than the pipeline used
    a, b = ort_rt.run(model, feeds), ort_rt.run(new, feeds)
    for k in a:
        scale = float(np.max(np.abs(a[k]))) if a[k].size else 0.0
        assert float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) <= 1e-4 + 1e-4 * scale, k
