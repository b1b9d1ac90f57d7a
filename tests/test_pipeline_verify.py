"""Pass verification: per-channel tolerance, NaN-aware, on more than one input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny import model_of

from graphkit.errors import VerificationError
from graphkit.passes.base import REGISTRY, PassResult, register
from graphkit.pipeline import VERIFY_INPUTS, Tolerance, parse_pipeline, run_pipeline, worst_excess


def test_a_small_channel_is_held_to_its_own_scale_not_the_largest_one():
    ref = np.zeros((1, 2, 4, 4), np.float32)
    ref[:, 0] = 4e7  # a huge channel
    ref[:, 1] = 0.69  # a channel that never exceeds 0.69
    moved = ref.copy()
    moved[0, 1, 0, 0] += 1.0  # +145% on the small channel; 2.5e-8 of the largest value
    diff, allowed = worst_excess(ref, moved, Tolerance())
    assert diff == pytest.approx(1.0) and allowed == pytest.approx(1e-4 + 1e-3 * 0.69)
    assert diff > allowed  # the whole-output scale would have allowed 40,000
    # the same relative change on the huge channel is within its own allowance
    ok = ref.copy()
    ok[0, 0, 0, 0] *= 1 + 1e-5
    diff, allowed = worst_excess(ref, ok, Tolerance())
    assert diff <= allowed


def test_nan_in_the_reference_neither_sets_the_scale_nor_fails_a_matching_output():
    ref = np.array([[np.nan, 1.0, -2.0, np.inf]], np.float32)
    same = ref.copy()
    same[0, 1] += 1e-4
    diff, allowed = worst_excess(ref, same, Tolerance())
    assert np.isfinite(allowed) and diff <= allowed
    moved_nan = ref.copy()
    moved_nan[0, 0] = 0.0  # a NaN that went away is a change
    assert worst_excess(ref, moved_nan, Tolerance())[0] == float("inf")


def _log_model() -> onnx.ModelProto:
    """y = Identity(Log(x)): NaN for every negative random input."""
    nodes = [
        helper.make_node("Log", ["x"], ["l"], name="log"),
        helper.make_node("Identity", ["l"], ["i"], name="junk"),
        helper.make_node("Mul", ["i", "two"], ["y"], name="mul"),
    ]
    two = {"two": np.array(2.0, np.float32)}
    return model_of(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4])], two, name="nan")


def test_a_model_with_nan_outputs_on_random_inputs_can_still_be_cleaned():
    model, reports = run_pipeline(_log_model(), parse_pipeline(["cleanup"]))
    assert [n.op_type for n in model.graph.node] == ["Log", "Mul"]
    assert reports[0].max_abs_diff is not None  # it was verified, not skipped


@pytest.fixture()
def break_on_some_inputs():
    """A pass whose change shows only on inputs with max(x) > 1.5 (removed afterwards)."""
    register("test-break-on-second-input")(_break_on_some_inputs)
    yield
    REGISTRY.pop("test-break-on-second-input", None)


def _break_on_some_inputs(graph: ir.Model) -> PassResult:
    """Multiply y by 1 + 0.5 * [x[0,0,0,0] > 1.5]: a change only some inputs show."""
    model = ir.to_proto(graph)  # the edit is easiest to state on the protobuf
    g = model.graph
    for node in g.node:
        if node.output[0] == "y":
            node.output[0] = "y_raw"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(1.5, np.float32), "thr"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("ReduceMax", ["x"], ["xm"], keepdims=0),
            helper.make_node("Greater", ["xm", "thr"], ["big"]),
            helper.make_node("Cast", ["big"], ["bigf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["bigf", "half"], ["bump"]),
            helper.make_node("Add", ["one", "bump"], ["factor"]),
            helper.make_node("Mul", ["y_raw", "factor"], ["y"]),
        ]
    )
    return PassResult(ir.from_proto(model), True, ["changes y when max(x) > 1.5"])


def test_every_pass_is_checked_on_more_than_one_random_input(break_on_some_inputs):
    assert VERIFY_INPUTS >= 2
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = model_of(nodes, [("x", [1, 1, 1, 2])], [("y", [1, 1, 1, 2])])
    # find a seed whose first input hides the change and whose second shows it
    from graphkit.pipeline import sample_feeds

    seed = next(
        s
        for s in range(200)
        if sample_feeds(model, model, s)["x"].max() <= 1.5
        and sample_feeds(model, model, s + 1000)["x"].max() > 1.5
    )
    with pytest.raises(VerificationError, match="test-break-on-second-input.*rolled back"):
        run_pipeline(model, parse_pipeline(["test-break-on-second-input"]), seed=seed)


def _two_scale_model(path):
    """HRNet-like: a full-resolution branch plus a half-resolution one upsampled and joined
    back; dynamic N, H, W. At H = W = 1 the branches come back at different sizes (1 and
    2) and the Concat fails, as a real HRNet's fuse layers do."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["c_id"]),
        helper.make_node("MaxPool", ["c_id"], ["half"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["half", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["c_id", "up"], ["y"], axis=1),
    ]
    x, y = ("x", ["N", 3, "H", "W"]), ("y", ["N", 8, "H", "W"])
    model = model_of(nodes, [x], [y], [w, scales], name="two_scale")
    onnx.save(model, path)
    return path


def test_free_dims_are_verified_at_a_size_the_model_runs_at(tmp_path, capsys):
    from graphkit.cli import main

    model = _two_scale_model(tmp_path / "m.onnx")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- cleanup\n")
    assert main(["apply", str(pipe), str(model), "-o", str(tmp_path / "o.onnx")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "free dims set to 64 (x 1x3x64x64)" in out
    assert "identity" in out.lower()  # the pass ran and was verified
    # a size given by the user is used as is
    args = ["apply", str(pipe), str(model), "-o", str(tmp_path / "o2.onnx")]
    assert main([*args, "--verify-shape", "2x3x32x48"]) == 0
    assert "given input shapes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "shape, message",
    [
        ("1x3x64", "does not fit the model's input ?x3x?x?"),
        ("1x4x64x64", "does not fit"),
        ("img:1x3x64x64", "not an input of the model"),
        ("1x3xbigx64", "expected dims like"),
    ],
)
def test_a_verify_shape_the_model_cannot_take_is_refused(tmp_path, capsys, shape, message):
    from graphkit.cli import main

    model = _two_scale_model(tmp_path / "m.onnx")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- cleanup\n")
    out = tmp_path / "o.onnx"
    assert main(["apply", str(pipe), str(model), "-o", str(out), "--verify-shape", shape]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists()
