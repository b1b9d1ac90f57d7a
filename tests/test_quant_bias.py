"""Empirical bias correction removes the int8 mean shift of Conv outputs, layer by layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from quant_planted import table_for
from quant_synthetic import make_model, sample_feeds, write_data
from tiny import model_of

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.quant.bias import channel_means, correct_bias, int8_convs
from graphkit.quant.qdq import insert_qdq
from graphkit.runtime.ort import make_session


def mean_shift(float_model, qdq, outputs, samples) -> dict[str, float]:
    """Mean over channels of |E[int8 - fp32]| of each tensor (independent of correct_bias)."""
    ref = channel_means(float_model, outputs, samples)
    got = channel_means(qdq, outputs, samples)
    return {t: float(np.abs(got[t] - ref[t]).mean()) for t in outputs}


def coarse_table(model, samples):
    """minmax with activation ranges 3x too wide: coarse int8 steps, a visible mean shift."""
    table = table_for(model, samples)
    for entry in table.activations.values():
        entry.amax *= 3.0
    return table


def test_correction_reduces_the_mean_shift_of_every_conv_and_still_loads():
    model = make_model()
    samples = sample_feeds(6)
    qdq = insert_qdq(model, coarse_table(model, samples))
    fixed, report = correct_bias(model, qdq, samples)
    convs = {n.name: n.output[0] for n in int8_convs(qdq)}
    assert set(report.nodes) == set(convs) == {"conv1", "dwconv", "pwconv"}
    before = mean_shift(model, qdq, list(convs.values()), samples)
    after = mean_shift(model, fixed, list(convs.values()), samples)
    for t in convs.values():
        assert after[t] < 0.05 * before[t], (t, before[t], after[t])
    # held-out samples: the shift stays lower (it is a property of the model, not of the fit)
    held = sample_feeds(6, seed=7)
    before_h = mean_shift(model, qdq, list(convs.values()), held)
    after_h = mean_shift(model, fixed, list(convs.values()), held)
    assert sum(after_h.values()) < sum(before_h.values())
    # biasless depthwise / pointwise Convs got a bias; the input model is untouched
    by = {n.name: n for n in fixed.graph.node}
    assert len(by["dwconv"].input) == 3 and len(by["pwconv"].input) == 3
    assert len({n.name: n for n in qdq.graph.node}["dwconv"].input) == 2
    onnx.checker.check_model(fixed)
    sess = make_session(fixed)
    y = sess.run(None, held[0])
    assert all(np.isfinite(a).all() for a in y)


def shared_bias_model() -> onnx.ModelProto:
    """x -> convA -> relu -> convB -> y, convA and convB reading the same bias 'b'."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "b"], ["ca"], name="convA", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["ca", "lo", "hi"], ["ra"], name="clip"),
        helper.make_node("Conv", ["ra", "wb", "b"], ["y"], name="convB", pads=[1, 1, 1, 1]),
    ]
    return model_of(
        nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4, 16, 16])], inits, name="shared_bias"
    )


def test_shared_bias_is_split_and_each_conv_corrected_for_its_own_shift():
    model = shared_bias_model()
    samples = sample_feeds(6)
    qdq = insert_qdq(model, coarse_table(model, samples))
    fixed, _ = correct_bias(model, qdq, samples)
    by = {n.name: n for n in fixed.graph.node}
    ba, bb = by["convA"].input[2], by["convB"].input[2]
    assert ba != bb and "b" not in {ba, bb}
    inits = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    assert not np.allclose(inits[ba], inits[bb])
    before = mean_shift(model, qdq, ["ca", "y"], samples)
    after = mean_shift(model, fixed, ["ca", "y"], samples)
    for t in ("ca", "y"):  # the pre-activation Conv output is what is corrected
        assert after[t] < 0.05 * before[t]


def test_no_samples_is_refused():
    model = make_model()
    with pytest.raises(GraphkitError, match="at least one sample"):
        correct_bias(model, insert_qdq(model, table_for(model, sample_feeds(2))), [])


def test_cli_bias_correction_puts_corrected_biases_in_the_plan_and_the_qdq(tmp_path):
    from graphkit.quant.table import QuantPlan

    model, spec = write_data(tmp_path, n=4)
    out, qdq = tmp_path / "t.json", tmp_path / "q.onnx"
    argv = ["calibrate", str(model), "--data", str(spec), "-o", str(out), "--recipe", "plain"]
    assert main([*argv, "--bias-correction", "--qdq", str(qdq), "--weight-samples", "2"]) == 0
    plan = QuantPlan.load(out)
    assert {"dwconv", "conv1"} <= set(plan.biases)
    written = onnx.load(qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(model).graph.initializer}
    for node in written.graph.node:
        if node.name in plan.biases:
            got = inits[node.input[2]]
            assert np.allclose(got, plan.biases[node.name])
            assert node.input[2] not in original or not np.allclose(got, original[node.input[2]])
    make_session(written)


def test_samples_of_different_sizes_are_corrected_alike():
    """Bottom-up specs give every image its own size; the part-by-part run takes them."""
    model = make_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"  # free height and width
    rng = np.random.default_rng(5)
    samples = [
        {"x": rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)}
        for h, w in ((16, 16), (24, 20), (12, 28))
    ]
    qdq = insert_qdq(model, coarse_table(model, samples))
    fixed, report = correct_bias(model, qdq, samples)
    convs = [n.output[0] for n in int8_convs(qdq)]
    before = mean_shift(model, qdq, convs, samples)
    after = mean_shift(model, fixed, convs, samples)
    assert report.nodes and sum(after.values()) < 0.2 * sum(before.values())


def test_later_convs_are_measured_on_the_corrected_outputs_of_earlier_ones():
    # after one sweep the corrected model itself has (almost) no shift left at any Conv:
    # each depth was measured on what the corrected earlier depths compute
    model = make_model()
    samples = sample_feeds(6)
    qdq = insert_qdq(model, coarse_table(model, samples))
    fixed, _ = correct_bias(model, qdq, samples)
    outputs = [n.output[0] for n in int8_convs(fixed)]
    before = mean_shift(model, qdq, outputs, samples)
    after = mean_shift(model, fixed, outputs, samples)
    assert all(after[t] < 1e-3 * max(before[t], 1e-3) + 1e-5 for t in outputs), after


@pytest.mark.parametrize("opset", [13, 18])
def test_channel_means_are_float64_means_of_the_optimized_outputs(opset):
    """The means are taken inside onnxruntime: they must equal numpy's float64 means of
    the same tensors (a float32 mean is off by a tenth of a typical shift), whichever
    ReduceMean signature the model's opset has."""
    from graphkit.runtime.ort import with_outputs

    model = make_model()
    model.opset_import[0].version = opset
    samples = sample_feeds(3)
    outputs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    sess = make_session(with_outputs(model, outputs))
    want = {t: [] for t in outputs}
    for feeds in samples:
        for t, y in zip(outputs, sess.run(outputs, feeds)):
            want[t].append(np.asarray(y, np.float64).mean(axis=(0, 2, 3)))
    got = channel_means(model, outputs, samples)
    assert set(got) == set(outputs)
    for t in outputs:
        np.testing.assert_allclose(got[t], np.mean(want[t], axis=0), rtol=1e-12, atol=1e-12)


def test_through_activation_matches_the_mean_the_next_layers_read():
    """A Conv read only by a Relu is corrected, with through_activation, for the shift of
    the Relu's output (what the next layers read) instead of its own: that shift ends far
    below both the uncorrected one and what the plain correction, whose mean counts the
    positions the Relu clips, leaves."""
    model = make_model()
    samples = sample_feeds(6)
    qdq = insert_qdq(model, coarse_table(model, samples))
    plain, _ = correct_bias(model, qdq, samples, nodes=["conv1"])
    through, _ = correct_bias(model, qdq, samples, nodes=["conv1"], through_activation=True)
    shift = {
        name: mean_shift(model, m, ["r1"], samples)["r1"]
        for name, m in (("none", qdq), ("plain", plain), ("through", through))
    }
    assert shift["through"] < 0.2 * shift["none"], shift
    assert shift["through"] < shift["plain"], shift
