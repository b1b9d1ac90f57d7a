"""select-outputs and extract: what is kept equals the old tensors; bad cuts fail clearly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.passes.outputs import extract, select_outputs
from graphkit.pipeline import parse_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt


def small_model() -> onnx.ModelProto:
    """x -> conv -> relu(a) -> add(a, x) = b; outputs: sig = sigmoid(a), b, and n = neg(b)."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["a"], name="relu"),
        helper.make_node("Add", ["a", "x"], ["b"], name="add"),
        helper.make_node("Sigmoid", ["a"], ["sig"], name="sig"),
        helper.make_node("Neg", ["b"], ["n"], name="neg"),
    ]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph(nodes, "g", [vi("x")], [vi("sig"), vi("b"), vi("n")], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}


# --------------------------------------------------------------------------- select-outputs


@pytest.mark.parametrize(
    "options, kept",
    [({"last": True}, ["n"]), ({"index": 0}, ["sig"]), ({"names": ["n", "sig"]}, ["n", "sig"])],
)
def test_select_outputs_keeps_chosen_outputs_and_drops_the_rest(options, kept) -> None:
    model = small_model()
    result, reports = run_pipeline(model, parse_pipeline([{"select-outputs": options}]))
    assert [o.name for o in result.graph.output] == kept
    assert reports[0].max_abs_diff is not None and set(reports[0].max_abs_diff) == set(kept)
    old = ort_rt.run(model, _feeds())
    new = ort_rt.run(result, _feeds())
    for name in kept:
        np.testing.assert_array_equal(new[name], old[name])
    needed = {"sig": {"conv", "relu", "sig"}, "n": {"conv", "relu", "add", "neg"}}
    assert {n.name for n in result.graph.node} == set().union(*(needed[k] for k in kept))


def test_select_outputs_without_change_says_so() -> None:
    result = select_outputs(small_model(), names=["sig", "b", "n"])
    assert not result.changed and "nothing to do" in result.notes[0]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"names": ["nn"]}, "'nn' is not an output of the model.*did you mean 'n'"),
        ({"names": ["a"]}, "'a' is an intermediate tensor.*use the extract pass"),
        ({"index": 3}, "out of range"),
        ({}, "exactly one of"),
        ({"last": True, "index": 0}, "exactly one of"),
    ],
)
def test_select_outputs_bad_options_give_one_sentence(options, message) -> None:
    with pytest.raises(GraphkitError, match=message) as exc:
        select_outputs(small_model(), **options)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- extract


def test_extract_outputs_equal_old_intermediate_tensors() -> None:
    model = small_model()
    result, _reports = run_pipeline(model, parse_pipeline([{"extract": {"outputs": ["a", "b"]}}]))
    assert [o.name for o in result.graph.output] == ["a", "b"]
    assert {n.op_type for n in result.graph.node} == {"Conv", "Relu", "Add"}
    old = ort_rt.run(model, _feeds(), outputs=["a", "b"])
    new = ort_rt.run(result, _feeds())
    for name in ("a", "b"):  # ORT optimizes the old model differently: allow rounding
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=1e-6)


def test_extract_inputs_cut_off_the_front_and_infer_the_type() -> None:
    model = small_model()
    result = extract(model, inputs=["c"], outputs=["sig"]).model
    (inp,) = result.graph.input
    assert inp.name == "c" and inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 4, 4]
    assert [n.op_type for n in result.graph.node] == ["Relu", "Sigmoid"]
    assert not result.graph.initializer  # the conv weight no longer contributes
    c = ort_rt.run(small_model(), _feeds(), outputs=["c", "sig"])
    np.testing.assert_allclose(ort_rt.run(result, {"c": c["c"]})["sig"], c["sig"], atol=1e-6)


def test_extract_measures_types_shape_inference_does_not_know() -> None:
    """A contrib op (onnxruntime runs it, onnx cannot infer it): the cut is typed by a run."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft"),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [z]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
    )
    result, reports = run_pipeline(model, parse_pipeline([{"extract": {"inputs": ["y"]}}]))
    (inp,) = result.graph.input
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [2, 5]
    assert "measured with one onnxruntime run" in " ".join(reports[0].notes)
    assert [n.op_type for n in result.graph.node] == ["Relu"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"outputs": ["relu_out"]}, "'relu_out' is not a tensor of the graph"),
        ({"inputs": ["a"], "outputs": ["b"]}, "the cut is not closed.*graph input 'x'"),
        ({"inputs": ["w"], "outputs": ["b"]}, "is a weight"),
        ({"inputs": ["c", "x"], "outputs": ["sig"]}, "new input 'x' does not feed"),
        ({}, "needs 'inputs', 'outputs' or both"),
    ],
)
def test_extract_bad_cuts_give_one_sentence(options, message) -> None:
    with pytest.raises(GraphkitError, match=message) as exc:
        extract(small_model(), **options)
    assert "\n" not in str(exc.value)


def test_extract_bad_name_through_cli_fails_cleanly(tmp_path, capsys) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), str(src))
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- extract: {outputs: [bb]}\n")
    out = tmp_path / "out.onnx"
    assert main(["apply", str(pipe), str(src), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "'bb' is not a tensor of the graph" in err and "Traceback" not in err
    assert not out.exists()


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_extract_drops_movenet_in_graph_decoding(assets) -> None:
    """MoveNet's heads (heatmap, center, regression, offset) without its decode ops."""
    from graphkit.model import load_model

    model = load_model(assets / "models" / "movenet-lightning.onnx")
    heads = [
        "StatefulPartitionedCall/Sigmoid:0",
        "StatefulPartitionedCall/Sigmoid_1:0",
        "StatefulPartitionedCall/kpt_regress_0/conv2d_6/BiasAdd_BiasAdd__111:0",
        "StatefulPartitionedCall/kpt_offset_0/conv2d_7/BiasAdd_BiasAdd__113:0",
    ]
    result, reports = run_pipeline(model, parse_pipeline([{"extract": {"outputs": heads}}]))
    ops = {n.op_type for n in result.graph.node}
    assert not ops & {"ArgMax", "GatherND"}
    assert len(result.graph.node) < len(model.graph.node)
    assert set(reports[0].max_abs_diff) == set(heads)
    feeds = ort_rt.sample_inputs(model, seed=3)
    old = ort_rt.run(model, feeds, outputs=heads)
    new = ort_rt.run(result, feeds, outputs=heads)  # same (unoptimized) session settings
    for name in heads:
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=1e-6)
    assert new[heads[0]].shape == (1, 17, 48, 48)  # 17 COCO heatmaps at stride 4 (NCHW inside)


# --------------------------------------------------------------------------- torch fixtures


@pytest.fixture(scope="module")
def mm():
    pytest.importorskip("torch")
    import mmpose_like

    return mmpose_like


@pytest.mark.torch
def test_extract_cuts_off_argmax_decode(mm) -> None:
    model = mm.cached_export("hrnet", "decode")
    reference = mm.cached_export("hrnet", "last")
    heat = [n for n in model.graph.node if n.op_type == "Conv"][-1].output[0]
    result, _ = run_pipeline(model, parse_pipeline([{"extract": {"outputs": [heat]}}]))
    assert not {n.op_type for n in result.graph.node} & {"ArgMax", "ReduceMax", "TopK"}
    x = {"input": np.random.default_rng(2).standard_normal(mm.INPUT_SHAPE).astype(np.float32)}
    np.testing.assert_allclose(
        ort_rt.run(result, x)[heat], ort_rt.run(reference, x)["output_0"], rtol=0, atol=1e-5
    )


@pytest.mark.torch
def test_extract_cuts_off_in_graph_normalization(mm) -> None:
    model = mm.cached_export("hrnet", "preprocess")
    reference = mm.cached_export("hrnet", "last")
    normalized = next(n for n in model.graph.node if n.op_type == "Div").output[0]
    result, _ = run_pipeline(model, parse_pipeline([{"extract": {"inputs": [normalized]}}]))
    (inp,) = result.graph.input
    assert inp.name == normalized
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == list(mm.INPUT_SHAPE)
    assert not {n.op_type for n in result.graph.node} & {"Sub", "Div"}
    x = np.random.default_rng(4).standard_normal(mm.INPUT_SHAPE).astype(np.float32)
    np.testing.assert_allclose(
        ort_rt.run(result, {normalized: x})["output_0"],
        ort_rt.run(reference, {"input": x})["output_0"],
        rtol=0,
        atol=1e-5,
    )
