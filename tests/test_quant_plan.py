"""The quantization plan: one set of integers, saved, reloaded and carried to every backend."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_export_fixtures import calibrated_table, feeds, tiny_cnn

from graphkit.backends import export_all
from graphkit.errors import GraphkitError
from graphkit.model import model_hash
from graphkit.quant.deploy import fill_integers, nearest_integers
from graphkit.quant.equalize import apply_equalization, equalization
from graphkit.quant.refine import optimize_weights
from graphkit.quant.table import EqualizationEntry, QuantPlan


@pytest.fixture(scope="module")
def planned():
    """tiny_cnn with a plan whose integers are GPTQ-rounded and one bias corrected."""
    model = tiny_cnn()
    plan = calibrated_table(model, feeds(8), method="minmax")
    rounded, _ = optimize_weights(model, feeds(8, seed=3), plan)
    fill_integers(plan, model, rounded)
    plan.biases["pw"] = [0.5] * 8
    return model, plan


@pytest.fixture(scope="module")
def planned_equalized():
    """tiny_cnn with its dw -> relu -> pw pair equalized, planned like `planned` on the
    result: the plan is for tiny_cnn as it is, and records the pair's scales."""
    model = tiny_cnn()
    pairs = equalization(model, feeds(8), clip=False)
    assert [(p["producer"], p["act"], p["consumers"]) for p in pairs] == [("dw", "relu2", ["pw"])]
    rescaled = apply_equalization(model, pairs)
    plan = calibrated_table(rescaled, feeds(8), method="minmax")
    rounded, _ = optimize_weights(rescaled, feeds(8, seed=3), plan)
    fill_integers(plan, rescaled, rounded)
    plan.biases["pw"] = [0.5] * 8
    plan.model_hash = model_hash(model)
    plan.equalization = [EqualizationEntry(**p) for p in pairs]
    return model, plan


def int8_initializers(path) -> dict[str, np.ndarray]:
    """Weight name -> the integers a Q/DQ model computes with: stored int8 initializers, or
    (AMCT's form) float weights through a QuantizeLinear with their scales."""
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {n.removesuffix("_quantized"): v for n, v in inits.items() if n.endswith("_quantized")}
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:
            w, scale = inits[node.input[0]], inits[node.input[1]]
            shape = [1] * w.ndim
            if scale.size > 1:
                shape[next(a.i for a in node.attribute if a.name == "axis")] = -1
            out[node.input[0]] = np.clip(np.round(w / scale.reshape(shape)), -127, 127)
    return out


def test_plan_integers_differ_from_nearest_rounding_somewhere(planned):
    """Otherwise the identity test below would prove nothing about carrying decisions."""
    model, plan = planned
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert any(
        not np.array_equal(e.integers(), nearest_integers(inits[n], e))
        for n, e in plan.weights.items()
    )


def test_plan_survives_save_and_load(tmp_path, planned):
    _, plan = planned
    plan.save(tmp_path / "p.json")
    back = QuantPlan.load(tmp_path / "p.json")
    assert back.biases == plan.biases and back.schema_version == 4
    for name, entry in plan.weights.items():
        assert np.array_equal(back.weights[name].integers(), entry.integers())


def test_schema_1_tables_still_load(tmp_path, planned):
    _, plan = planned
    d = plan.to_dict()
    for key in ("float_reasons", "biases", "recipe"):
        d.pop(key)
    for w in d["weights"].values():
        for key in ("qmax", "shape", "int8", "rounding"):
            w.pop(key)
    for a in d["activations"].values():
        a.pop("method")
    d["schema_version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(d))
    old = QuantPlan.load(tmp_path / "v1.json")
    assert old.weights and all(w.integers() is None for w in old.weights.values())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(colour=1), "unknown key 'colour'"),
        (lambda d: d["activations"]["x"].update(amax="big"), "activations.x.amax: input should"),
        (lambda d: d["weights"]["w1"].update(qmax=1000), "weights.w1.qmax: input should be less"),
        (lambda d: d["weights"]["w1"].update(speed=2), "unknown key 'weights.w1.speed'"),
        (lambda d: d["weights"]["w1"].update(axis="0"), "weights.w1.axis: input should"),
        (lambda d: d["weights"]["w1"]["amax"].append(float("nan")), "weights.w1.amax.*finite"),
        (lambda d: d.update(keep_float="conv1"), "keep_float: input should be a list"),
        (lambda d: d.pop("method"), "not a graphkit calibration table"),
        (lambda d: d.pop("schema_version"), "schema version None"),
    ],
)
def test_malformed_plan_files_are_refused_in_one_sentence(tmp_path, planned, edit, message):
    d = planned[1].to_dict()
    edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(GraphkitError, match=message):
        QuantPlan.load(tmp_path / "bad.json")


def test_snapped_weights_give_back_the_integers_by_absmax(planned):
    """What TensorRT (cache), AMCT and vamc do with a float model: absmax per channel /
    127, round to nearest. On the deploy model that is the plan's integers."""
    model, plan = planned
    deploy = plan.deploy_model(model)
    inits = {i.name: numpy_helper.to_array(i) for i in deploy.graph.initializer}
    for name, entry in plan.weights.items():
        w = inits[name]
        axes = tuple(i for i in range(w.ndim) if i != entry.axis)
        amax = np.abs(w).max(axis=axes, keepdims=True)
        assert np.array_equal(np.round(w / (amax / 127)), entry.integers()), name


@pytest.mark.parametrize("which", ["planned", "planned_equalized"])
def test_every_backend_carries_the_same_integers(tmp_path, which, request, pnnx_installed):
    model, plan = request.getfixturevalue(which)
    export_all(plan, model, ["onnx", "tensorrt", "atc", "ncnn"], tmp_path / "out")
    out = tmp_path / "out"
    for qdq in ("onnx/model.qdq.onnx", "tensorrt/model.qdq.onnx", "atc/model.qdq.onnx"):
        got = int8_initializers(out / qdq)
        assert set(got) == set(plan.weights), qdq
        for name, entry in plan.weights.items():
            assert np.array_equal(got[name], entry.integers()), (qdq, name)
    # ncnn: the int8 weight blob of each layer, matched to its ONNX twin by the fp32 weights
    from graphkit.backends.ncnn import exporter as ex
    from graphkit.backends.ncnn import runtime as nc

    fp32 = nc.read_param(out / "ncnn/model.ncnn.param")
    fp32_blobs = nc.read_bin(fp32, (out / "ncnn/model.ncnn.bin").read_bytes())
    twins = ex.match_layers(plan.deploy_model(model), fp32, fp32_blobs)
    int8 = nc.read_param(out / "ncnn/model.int8.param")
    int8_blobs = nc.read_bin(int8, (out / "ncnn/model.int8.bin").read_bytes())
    checked = 0
    for layer, node in twins.items():
        entry = plan.weights[node.input[1]]
        q = int8_blobs[layer][0].data
        assert q.dtype == np.int8
        assert np.array_equal(q.ravel(), entry.integers().ravel()), layer
        checked += 1
    assert checked == len(plan.weights)
    # the corrected bias reaches the float models too
    deploy = onnx.load(out / "tensorrt/model.onnx")
    pw = next(n for n in deploy.graph.node if n.name == "pw")
    bias = next(i for i in deploy.graph.initializer if i.name == pw.input[2])
    assert np.allclose(numpy_helper.to_array(bias), 0.5)
    if plan.equalization:  # the producer's bias went with its rows, into the shipped model
        dw = next(n for n in deploy.graph.node if n.name == "dw")
        got = next(i for i in deploy.graph.initializer if i.name == dw.input[2])
        b2 = next(i for i in model.graph.initializer if i.name == "b2")
        s = np.asarray(plan.equalization[0].scales)
        assert np.allclose(numpy_helper.to_array(got), numpy_helper.to_array(b2) / s, rtol=1e-5)


def test_an_equalized_plan_deploys_the_rescaled_model_with_the_same_function(
    tmp_path, planned_equalized
):
    """The user's model in, the pair rescaled out (dw's rows, pw's columns), the float
    function kept up to the plan's int8 weights; the scales survive save and load."""
    from graphkit.runtime.ort import make_session

    model, plan = planned_equalized
    plan.save(tmp_path / "p.json")
    back = QuantPlan.load(tmp_path / "p.json")
    assert back.equalization == plan.equalization and back.schema_version == 4
    deploy = back.deploy_model(model)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in deploy.graph.initializer}
    s = np.asarray(plan.equalization[0].scales)
    assert not np.allclose(s, 1.0)
    # dw's rows divided by s, pw's input channels multiplied by it (both then on the grid)
    assert np.allclose(after["w2"] * s.reshape(-1, 1, 1, 1), before["w2"], rtol=0.02, atol=0.01)
    assert np.allclose(after["w3"] / s.reshape(1, -1, 1, 1), before["w3"], rtol=0.02, atol=0.01)
    unbiased = copy.deepcopy(back)
    unbiased.biases = {}  # the fixture's planted bias aside, the function is the model's
    a, b = make_session(model), make_session(unbiased.deploy_model(model))
    for f in feeds(4, seed=9):
        want, got = a.run(None, f)[0], b.run(None, f)[0]
        assert np.abs(got - want).max() < 0.03 * np.abs(want).max()
    with pytest.raises(GraphkitError, match="made for another model"):
        back.deploy_model(apply_equalization(model, [vars(e) for e in back.equalization]))


def test_a_plan_for_other_weights_is_refused(tmp_path, planned):
    _, plan = planned
    other = tiny_cnn()
    w = next(i for i in other.graph.initializer if i.name == "w1")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 4, "w1"))
    with pytest.raises(GraphkitError, match="made for another model"):
        export_all(plan, other, ["onnx"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ncnn_int8_computes_what_the_onnx_qdq_model_computes(tmp_path, planned, pnnx_installed):
    """Same integers, same thresholds: ncnn's int8 kernels (8-bit weights on the 3x3 s1
    conv too) and onnxruntime's Q/DQ model agree far below the int8 error itself."""
    from graphkit.backends.ncnn import runtime as nc
    from graphkit.runtime.ort import make_session

    model, plan = planned
    export_all(plan, model, ["onnx", "ncnn"], tmp_path / "out")
    out = tmp_path / "out"
    qdq = make_session(onnx.load(out / "onnx/model.qdq.onnx"))
    fp32 = make_session(model)
    net = nc.NcnnNet(out / "ncnn/model.int8.param", out / "ncnn/model.int8.bin", int8=True)
    for f in feeds(4, seed=7):
        want, ref = qdq.run(None, f)[0], fp32.run(None, f)[0]
        got = net.run({"in0": f["x"]}, ["out0"])["out0"].reshape(want.shape)
        assert np.abs(got - want).max() < 0.05 * np.abs(want - ref).max() + 1e-4


@pytest.mark.parametrize("amax", [1e-45, True, -1.0])
def test_degenerate_thresholds_are_refused(tmp_path, planned, amax):
    d = planned[1].to_dict()
    d["activations"]["x"]["amax"] = amax
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(GraphkitError, match="activations.x.amax: input should"):
        QuantPlan.load(tmp_path / "bad.json")
