"""Threshold refinement and weight rounding never worsen the layer-output error they optimize."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quant_planted import feeds, make_model, table_for

from graphkit.errors import GraphkitError
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.refine import optimize_weights, refine_thresholds, restore_weights
from graphkit.runtime.ort import make_session, with_outputs

CONSUMER = {"x": ("conv1", "c1"), "r1": ("conv2", "c2"), "r2": ("conv3", "y")}


@pytest.fixture(scope="module")
def setup():
    model = make_model(outlier=3.0)
    samples = feeds(4)
    table = table_for(model, samples)
    # a poor calibrator: x's range 4x too wide, r1's clipped to a third
    table.activations["x"].amax *= 4.0
    table.activations["r1"].amax /= 3.0
    return model, samples, table


def layer_error(model, table, tensor, samples) -> float:
    """Independent measure: only the consumer of `tensor` int8 (its input and weights),
    float input from the float model; squared error of its output."""
    node, out = CONSUMER[tensor]
    others = [n for n, _ in CONSUMER.values() if n != node]
    q = make_session(with_outputs(insert_qdq(model, table, keep_float=others), [out]))
    f = make_session(with_outputs(model, [out]))
    return sum(float(np.sum((q.run(None, s)[0] - f.run(None, s)[0]) ** 2)) for s in samples)


def test_refined_thresholds_never_worsen_and_fix_poor_ones(setup):
    model, samples, table = setup
    refined, report = refine_thresholds(model, samples, table)
    assert {r.tensor for r in report} == set(CONSUMER)
    for r in report:
        assert r.error_after <= r.error_before
        before = layer_error(model, table, r.tensor, samples)
        after = layer_error(model, refined, r.tensor, samples)
        assert after <= before * (1 + 1e-4)
        assert after == pytest.approx(r.error_after, rel=1e-2)
    by = {r.tensor: r for r in report}
    assert by["x"].amax_after < by["x"].amax_before
    assert by["r1"].amax_after > by["r1"].amax_before
    for t in ("x", "r1"):
        assert by[t].error_after < 0.8 * by[t].error_before
    assert refined.settings["refined"]["samples"] == 4
    assert table.activations["x"].amax == by["x"].amax_before  # the input is not modified


def test_extra_candidates_act_as_a_per_tensor_method_choice(setup):
    model, samples, table = setup
    good = {"x": [1.0]}  # the true range of the uniform inputs
    refined, _ = refine_thresholds(model, samples, table, factors=(1.0,), candidates=good)
    assert refined.activations["x"].amax == pytest.approx(good["x"][0])
    assert refined.activations["r1"].amax == table.activations["r1"].amax


def _conv_output_error(model, weights: np.ndarray, samples) -> float:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = next(i for i in m.graph.initializer if i.name == "w2")
    init.CopyFrom(numpy_helper.from_array(weights.astype(np.float32), "w2"))
    q = make_session(with_outputs(m, ["c2"]))
    f = make_session(with_outputs(model, ["c2"]))
    return sum(float(np.sum((q.run(None, s)[0] - f.run(None, s)[0]) ** 2)) for s in samples)


def test_weight_rounding_is_on_the_grid_and_beats_plain_rounding(setup):
    model, samples, table = setup
    optimized, report = optimize_weights(model, samples, table)
    assert {r.node for r in report} == {"conv1", "conv2", "conv3"}
    assert all(r.error_after <= r.error_before for r in report)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    w_opt = numpy_helper.to_array(next(i for i in optimized.graph.initializer if i.name == "w2"))
    scale = np.asarray(table.weights["w2"].amax).reshape(-1, 1, 1, 1) / 127.0
    steps = w_opt / scale
    assert np.allclose(steps, np.round(steps), atol=1e-3) and np.abs(steps).max() <= 127.001
    plain = np.clip(np.round(w / scale), -127, 127) * scale
    assert _conv_output_error(model, w_opt, samples) < _conv_output_error(model, plain, samples)
    # insert_qdq with the same table stores exactly these integers
    qdq = insert_qdq(optimized, table)
    q_int = numpy_helper.to_array(
        next(i for i in qdq.graph.initializer if i.name.startswith("w2_quantized"))
    )
    assert np.array_equal(q_int, np.round(steps).astype(np.int8))


def test_restore_weights_puts_back_the_float_weights_of_kept_layers(setup):
    model, samples, table = setup
    optimized, _ = optimize_weights(model, samples, table)
    back = restore_weights(optimized, model, ["conv2"])
    get = {i.name: numpy_helper.to_array(i) for i in back.graph.initializer}
    orig = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    opt = {i.name: numpy_helper.to_array(i) for i in optimized.graph.initializer}
    assert np.array_equal(get["w2"], orig["w2"]) and np.array_equal(get["w1"], opt["w1"])


def test_errors_are_one_sentence(setup):
    model, samples, table = setup
    with pytest.raises(GraphkitError, match="at least one sample"):
        refine_thresholds(model, [], table)
    with pytest.raises(GraphkitError, match="positive numbers"):
        refine_thresholds(model, samples, table, factors=(1.0, -2.0))
    with pytest.raises(GraphkitError, match="no layer input that can be refined"):
        refine_thresholds(model, samples, table, tensors=["nope"])
    with pytest.raises(GraphkitError, match="at least one sample"):
        optimize_weights(model, [], table)
    with pytest.raises(GraphkitError, match="no layer whose weights"):
        optimize_weights(model, samples, table, nodes=["relu1"])


def test_cli_round_weights_writes_rounded_int8_weights(tmp_path):
    from quant_planted import write_files

    from graphkit.cli import main

    model_path, spec = write_files(tmp_path, n=6)
    out = tmp_path / "t.json"
    plain, rounded = tmp_path / "plain.onnx", tmp_path / "rounded.onnx"
    base = ["calibrate", str(model_path), "--data", str(spec), "--recipe", "plain", "-o", str(out)]
    assert main([*base, "--method", "minmax", "--qdq", str(plain)]) == 0
    base += ["--method", "minmax", "--qdq", str(rounded), "--round-weights"]
    assert main([*base, "--fit-samples", "4", "--score-samples", "2"]) == 0
    from graphkit.quant.table import QuantPlan

    assert {w.rounding for w in QuantPlan.load(out).weights.values()} >= {"gptq"}

    def int8_weights(path):
        m = onnx.load(path)
        return {
            i.name: numpy_helper.to_array(i) for i in m.graph.initializer if "_quantized" in i.name
        }

    a, b = int8_weights(plain), int8_weights(rounded)
    assert set(a) == set(b) and any(not np.array_equal(a[k], b[k]) for k in a)
    make_session(onnx.load(rounded))


def test_cli_rounded_integers_reach_the_plan_without_a_qdq_output(tmp_path):
    from quant_planted import write_files

    from graphkit.cli import main
    from graphkit.quant.table import QuantPlan

    model_path, spec = write_files(tmp_path, n=6)
    out = tmp_path / "t.json"
    argv = ["calibrate", str(model_path), "--data", str(spec), "-o", str(out), "--recipe"]
    assert main([*argv, "plain", "--round-weights", "--fit-samples", "4"]) == 0
    plan = QuantPlan.load(out)
    assert all(w.integers() is not None for w in plan.weights.values())
    assert "rounding" in plan.recipe
    assert "gptq" in {w.rounding for w in plan.weights.values()}


@pytest.mark.parametrize("group, stride, dilation", [(1, 1, 1), (2, 2, 1), (4, 1, 2)])
def test_patches_reproduce_the_convolution(group, stride, dilation):
    """The im2col behind the weight rounding is the convolution ONNX computes."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 4 // group, 3, 3)).astype(np.float32)
    attrs = {"group": group, "strides": [stride, stride], "dilations": [dilation, dilation]}
    assert_rows_times_patches_are_the_output("Conv", w, (1, 4, 11, 10), pads=[1, 2, 2, 1], **attrs)


@pytest.mark.parametrize(
    "group, stride, dilation, pads, extra",
    [
        (1, 2, 1, [0, 0, 0, 0], [0, 0]),
        (2, 2, 1, [1, 1, 1, 1], [1, 1]),
        (1, 3, 2, [2, 1, 0, 3], [0, 1]),
    ],
)
def test_transposed_convolution_is_a_convolution_of_the_zero_inserted_input(
    group, stride, dilation, pads, extra
):
    """A ConvTranspose's rows (flipped kernel, channel axes swapped) times the patches of
    its zero-inserted input are the output ONNX computes."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (4, 6 // group, 4, 3)).astype(np.float32)
    attrs = {"group": group, "strides": [stride, stride], "dilations": [dilation, dilation]}
    assert_rows_times_patches_are_the_output(
        "ConvTranspose", w, (1, 4, 5, 6), pads=pads, output_padding=extra, **attrs
    )


@pytest.mark.parametrize("stride, dilation, pads", [(2, 1, [1, 1, 1, 1]), (3, 2, [2, 1, 0, 3])])
def test_transposed_convolution_hessian_is_block_diagonal_over_output_phases(
    stride, dilation, pads
):
    """Each output phase of a strided ConvTranspose reads its own taps: the per-phase
    blocks are the whole Hessian, every entry outside them is zero."""
    from onnx import helper

    from graphkit.quant.layer_view import view_of

    w_shape = (6, 2, 4, 3)
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[stride, stride],
        dilations=[dilation, dilation], pads=pads, group=2,
    )  # fmt: skip
    view = view_of(node, w_shape)
    x = np.random.default_rng(0).normal(0, 1, (1, 6, 5, 4)).astype(np.float32)
    p = view.patches(x, 100_000, np.random.default_rng(1))
    full = np.matmul(p.transpose(0, 2, 1), p)
    blocks = view.hessians(x, 100_000, np.random.default_rng(1))
    assembled = np.zeros_like(full)
    covered = np.concatenate([cols for _, cols in view.blocks()])
    assert sorted(covered) == list(range(view.cols))  # every column in exactly one block
    for (_, cols), (h, vectors) in zip(view.blocks(), blocks):
        assembled[:, cols[:, None], cols[None, :]] = h
        assert 0 < vectors < p.shape[1]  # the block's phase, not every vector
    assert len(blocks) > 1 and view.widest < view.cols
    assert np.allclose(assembled, full, atol=1e-4)


def test_transposed_convolution_rounding_beats_plain_rounding():
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (8, 6, 4, 4)).astype(np.float32)
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]
    )
    graph = helper.make_graph(
        [node],
        "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    base = rng.uniform(0.5, 1.5, (8, 1, 8, 1, 1)).astype(np.float32)
    samples = [{"x": b + 0.2 * rng.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)} for b in base]
    table = table_for(model, samples)
    optimized, report = optimize_weights(model, samples, table)
    assert [r.node for r in report] == ["up"]
    assert report[0].error_after < 0.7 * report[0].error_before
    scale = np.asarray(table.weights["w"].amax).reshape(1, -1, 1, 1) / 127.0  # axis 1
    plain = np.clip(np.round(w / scale), -127, 127) * scale
    w_opt = numpy_helper.to_array(optimized.graph.initializer[0])
    assert np.allclose(w_opt / scale, np.round(w_opt / scale), atol=1e-3)  # on the grid
    assert output_error(model, w_opt, samples) < 0.8 * output_error(model, plain, samples)


@pytest.mark.parametrize("op, shape, attrs", [
    ("MatMul", (1, 7, 5), {}),
    ("Gemm", (7, 5), {"transB": 1}),
    ("Gemm", (5, 7), {"transA": 1}),
])  # fmt: skip
def test_linear_rows_times_input_rows_are_the_output(op, shape, attrs):
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (6, 5) if attrs.get("transB") else (5, 6)).astype(np.float32)
    assert_rows_times_patches_are_the_output(op, w, shape, **attrs)


def assert_rows_times_patches_are_the_output(op, w, x_shape, **attrs):
    from onnx import TensorProto, helper

    from graphkit.quant.layer_view import view_of

    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, x_shape).astype(np.float32)
    y = make_session(model).run(None, {"x": x})[0]
    view = view_of(node, w.shape)
    assert np.array_equal(view.weight(view.rows(w)), w)  # rows and back
    p = view.patches(x, 100_000, np.random.default_rng(4))  # every input vector, shuffled
    got = np.einsum("gpc,grc->grp", p, view.rows(w))  # (g, rows, P)
    got = got.reshape(-1, got.shape[2])  # (output channels, P)
    if view.kind == "linear":  # one output row per input row, in the order drawn
        want = y.reshape(-1, y.shape[-1])
        order = np.random.default_rng(4).permutation(len(want))
        assert np.allclose(got, want[order].T, atol=1e-4)
        return
    sh, sw = view.upsample
    shape = (1, x_shape[1], (x_shape[2] - 1) * sh + 1, (x_shape[3] - 1) * sw + 1)
    from graphkit.quant.layer_view import patch_index

    ys, xs = patch_index(shape, view.geo, 100_000, np.random.default_rng(4))
    assert len(ys) == y.shape[2] * y.shape[3]  # every output position
    assert np.allclose(got, y[0][:, ys, xs], atol=1e-4)


def output_error(model, weights, samples) -> float:
    """Squared output error, over `samples`, of `model` with its weight "w" replaced."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights.astype(np.float32), "w"))
    f, s = make_session(model), make_session(m)
    return sum(float(np.sum((s.run(None, d)[0] - f.run(None, d)[0]) ** 2)) for d in samples)


def depthwise(w: np.ndarray, rng: np.random.Generator) -> tuple[onnx.ModelProto, list]:
    """A 3x3 depthwise Conv with weights `w` and 8 samples of correlated, non-centred
    inputs: where rounding errors add up instead of averaging out."""
    from onnx import TensorProto, helper

    c = w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=c, pads=[1, 1, 1, 1])],
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 10, 10])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    base = rng.uniform(0.5, 1.5, (8, 1, c, 1, 1)).astype(np.float32)
    samples = [{"x": b + 0.1 * rng.normal(0, 1, (1, c, 10, 10)).astype(np.float32)} for b in base]
    return model, samples


def test_depthwise_rounding_beats_plain_rounding():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (6, 1, 3, 3)).astype(np.float32)
    model, samples = depthwise(w, rng)
    table = table_for(model, samples)
    optimized, report = optimize_weights(model, samples, table)
    assert report[0].error_after < 0.5 * report[0].error_before
    w_opt = numpy_helper.to_array(optimized.graph.initializer[0])
    scale = np.asarray(table.weights["w"].amax).reshape(-1, 1, 1, 1) / 127.0
    plain = np.clip(np.round(w / scale), -127, 127) * scale
    assert output_error(model, w_opt, samples) < output_error(model, plain, samples)


def test_cli_round_weights_with_auto_keep_float(tmp_path):
    from quant_planted import write_files

    from graphkit.cli import main
    from graphkit.quant.table import CalibrationTable

    model_path, spec = write_files(tmp_path, n=6)
    out, qdq = tmp_path / "t.json", tmp_path / "q.onnx"
    argv = ["calibrate", str(model_path), "--data", str(spec), "--method", "minmax", "-o"]
    argv += [str(out), "--qdq", str(qdq), "--round-weights", "--weight-samples", "3"]
    argv += ["--bias-correction", "off", "--target-agreement", "1"]
    assert main([*argv, "--max-float", "34%", "--sensitivity-samples", "3"]) == 0
    table = CalibrationTable.load(out)
    assert len(table.keep_float) == 1 and table.recipe["held_out"]["scored"] == 3
    kept = table.keep_float[0]
    wname = {"conv1": "w1", "conv2": "w2", "conv3": "w3"}[kept]
    q = onnx.load(qdq)
    # the layer kept float computes with its true float weights, not the rounded ones
    node = next(n for n in q.graph.node if n.name == kept)
    assert node.input[1] == wname
    w = next(i for i in q.graph.initializer if i.name == wname)
    orig = next(i for i in onnx.load(model_path).graph.initializer if i.name == wname)
    assert np.array_equal(numpy_helper.to_array(w), numpy_helper.to_array(orig))


def test_keep_float_choice_on_rounded_weights_scores_the_model_it_ships(setup):
    """With rounded weights, a layer kept float computes with its true weights, and the
    SQNR the choice reports is the one of exactly that model."""
    from graphkit.quant.sensitivity import OutputScorer, choose_keep_float, with_keep_float

    model, samples, table = setup
    rounded, _ = optimize_weights(model, samples, table)
    scorer = OutputScorer(model, feeds(3, seed=5))
    choice = choose_keep_float(model, scorer, table, count=1, base=rounded)
    shipped = insert_qdq(
        restore_weights(rounded, model, choice.keep_float),
        with_keep_float(table, choice.keep_float),
    )
    assert scorer(shipped) == pytest.approx(choice.sqnr_db)
    assert choice.baseline_db == pytest.approx(scorer(insert_qdq(rounded, table)))


def test_rounding_all_groups_at_once_equals_rounding_each_group_alone():
    from graphkit.quant.refine import _gptq

    rng = np.random.default_rng(3)
    groups, rows, cols = 5, 3, 12
    w = rng.normal(0, 1, (groups, rows, cols))
    x = rng.normal(0, 1, (groups, 200, cols)) + rng.uniform(0.5, 1.5, (groups, 1, cols))
    h = np.matmul(x.transpose(0, 2, 1), x)
    h[2, :, 4] = h[2, 4, :] = 0.0  # a dead input in one group
    scale = np.abs(w).max(axis=2) / 127.0
    together = _gptq(w, h, scale, 0.01, block=5)
    alone = np.concatenate(
        [_gptq(w[g : g + 1], h[g : g + 1], scale[g : g + 1], 0.01, block=5) for g in range(groups)]
    )
    assert np.array_equal(together, alone)
    assert np.abs(together).max() <= 127 and not np.array_equal(
        together, np.clip(np.round(w / scale[..., None]), -127, 127)
    )


def test_rounding_is_the_same_when_the_hessians_take_one_pass_per_conv(setup, monkeypatch):
    """A byte budget splits the Convs into passes over the samples (bounded memory on
    models with hundreds of wide Convs); each Conv's patches have their own seed, so the
    integers do not depend on the split."""
    from graphkit.quant import refine

    model, samples, table = setup
    together, report = optimize_weights(model, samples, table)
    passes = []
    real = refine._hessians
    monkeypatch.setattr(refine, "HESSIAN_BUDGET_BYTES", 1)
    monkeypatch.setattr(refine, "_hessians", lambda *a, **k: passes.append(1) or real(*a, **k))
    apart, report_apart = optimize_weights(model, samples, table)
    assert len(passes) == len(report) == 3
    inits = {i.name: numpy_helper.to_array(i) for i in together.graph.initializer}
    for i in apart.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(i), inits[i.name]), i.name
    assert [r.error_after for r in report_apart] == [r.error_after for r in report]


def test_upper_cholesky_of_the_inverse_hessian_matches_the_direct_one():
    """GPTQ's factor of H^-1 from one Cholesky and a triangular inverse equals
    cholesky(inv(H)) (upper), for one wide Conv and for a depthwise batch."""
    from graphkit.quant.refine import _upper_cholesky_of_inverse

    rng = np.random.default_rng(0)
    for groups, cols in [(1, 300), (40, 9)]:
        x = rng.standard_normal((groups, 2 * cols, cols))
        x[..., : cols // 3] *= 10.0
        h = x.transpose(0, 2, 1) @ x + np.eye(cols)
        u = _upper_cholesky_of_inverse(h)
        assert np.allclose(np.tril(u, -1), 0.0)
        direct = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
        assert np.allclose(u, direct, rtol=1e-9, atol=1e-12 * np.abs(direct).max())


def test_rounded_weights_are_the_shipped_weights_each_channel_keeping_its_extreme():
    """The default measures its float search and scores on the rounded weights; what it
    ships are the plan's integers, whose channel extremes must stay at +-127 for backends
    that take the scale from the snapped weights' absmax. GPTQ rounds around those pins, so
    the two are the same weights (before, pinning after rounding moved one integer per
    channel and the shipped movenet scored 0.45 dB below the measured one)."""
    from graphkit.quant.deploy import deploy_model, fill_integers

    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, (16, 1, 3, 3)).astype(np.float32)
    # each channel's extreme is its last column: it takes the error of all the others
    w[:, 0, 2, 2] = 3.0 * np.sign(rng.normal(size=16))
    model, samples = depthwise(w, rng)
    table = table_for(model, samples)
    optimized, report = optimize_weights(model, samples, table)
    assert report[0].error_after < report[0].error_before  # GPTQ kept somewhere
    fill_integers(table, model, optimized)
    shipped = numpy_helper.to_array(deploy_model(table, model).graph.initializer[0])
    rounded = numpy_helper.to_array(optimized.graph.initializer[0])
    np.testing.assert_array_equal(shipped, rounded)
    q = table.weights["w"].integers().reshape(16, -1)
    extreme = np.argmax(np.abs(w.reshape(16, -1)), axis=1)
    assert np.all(np.abs(q[np.arange(16), extreme]) == 127)


def test_every_layer_kind_with_a_constant_weight_is_rounded():
    """Conv, depthwise Conv, ConvTranspose, Gemm (transB) and MatMul alike, each never
    worse than nearest rounding on its own inputs."""
    from quant_synthetic import make_model, sample_feeds

    model, samples = make_model(), sample_feeds(6)
    table = table_for(model, samples)
    _, report = optimize_weights(model, samples, table)
    assert {r.node for r in report} == {"conv1", "dwconv", "pwconv", "deconv", "fc", "matmul"}
    assert all(r.error_after <= r.error_before for r in report)
    assert sum(r.error_after for r in report) < sum(r.error_before for r in report)


def test_a_layer_with_fewer_input_vectors_than_columns_can_keep_nearest_rounding():
    """6 token rows for 16 columns: GPTQ fits them exactly (in-sample error far below
    nearest's); with min_vectors=1 the layer keeps nearest rounding instead."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    w = rng.normal(0, 1, (16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    samples = [{"x": rng.normal(0, 1, (1, 3, 16)).astype(np.float32)} for _ in range(2)]
    table = table_for(model, samples)
    _, (fitted,) = optimize_weights(model, samples, table)
    assert fitted.error_after < 0.5 * fitted.error_before
    kept, (plain,) = optimize_weights(model, samples, table, min_vectors=1.0)
    assert plain.error_after == plain.error_before
    scale = np.asarray(table.weights["w"].amax).reshape(1, -1) / 127.0  # per output column
    nearest = np.clip(np.round(w / scale), -127, 127) * scale
    assert np.allclose(numpy_helper.to_array(kept.graph.initializer[0]), nearest, atol=1e-7)


def test_wide_blocks_rounded_in_float32_lose_nothing_against_float64():
    """A block of FLOAT32_FROM_COLUMNS columns or more is rounded in float32: on correlated
    patches (neighbouring pixels) its output error is within 1 % of float64 GPTQ's and
    far below nearest rounding's."""
    from graphkit.quant.refine import FLOAT32_FROM_COLUMNS, _gptq, _rounding_error

    rng = np.random.default_rng(0)
    cols, rows = FLOAT32_FROM_COLUMNS, 6
    base = rng.standard_normal((3 * cols, cols // 8))
    x = np.repeat(base, 8, axis=1) + 0.3 * rng.standard_normal((3 * cols, cols))
    h = (x.T @ x)[None]
    w = rng.standard_normal((1, rows, cols)) * 0.05
    scale = np.abs(w).max(axis=2) / 127.0
    q64 = _gptq(w, h, scale, 0.01)
    q32 = _gptq(w.astype(np.float32), h.astype(np.float32), scale.astype(np.float32), 0.01)
    assert q32.dtype == np.float32
    nearest = np.clip(np.round(w / scale[..., None]), -127, 127)
    e64, e32 = (_rounding_error(q, scale, w, h)[0] for q in (q64, q32.astype(np.float64)))
    e0 = _rounding_error(nearest, scale, w, h)[0]
    assert e32 <= 1.01 * e64 and e32 < 0.5 * e0
