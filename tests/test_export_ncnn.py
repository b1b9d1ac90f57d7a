"""ncnn: param/bin I/O, the ncnn2table table, the ncnn2int8 model, run for real."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export_fixtures import calibrated_table, feeds, tiny_cnn

from graphkit.backends.ncnn import exporter as ex
from graphkit.backends.ncnn import runtime as nc
from graphkit.backends.ncnn.convert import check_conversion, convert
from graphkit.errors import GraphkitError

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def converted(tmp_path_factory, pnnx_installed):
    model = tiny_cnn()
    nm = convert(model, tmp_path_factory.mktemp("ncnn"))
    param = nc.read_param(nm.param)
    blobs = nc.read_bin(param, nm.bin.read_bytes())
    return model, nm, param, blobs


def test_pnnx_conversion_matches_onnxruntime(converted):
    model, nm, param, _ = converted
    assert nm.inputs == {"x": "in0"} and nm.outputs == {"y": "out0"}
    diffs = check_conversion(model, nm, feeds(1)[0])
    assert diffs["y"] < 1e-4
    assert {lay.type for lay in param.layers} >= {
        "Convolution",
        "ConvolutionDepthWise",
        "InnerProduct",
    }


def test_param_and_bin_round_trip_byte_for_byte(converted):
    _, nm, param, blobs = converted
    assert param.text() == nm.param.read_text()
    assert nc.write_bin(param, blobs) == nm.bin.read_bytes()


def token_linear(rng: np.random.Generator) -> onnx.ModelProto:
    """x (1, 6, 8) -> MatMul by a constant (8, 5) "mm" -> Add bias -> y."""
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(0, 1, (8, 5)).astype(np.float32)
    b = rng.normal(0, 1, (5,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["t"], name="mm"),
            helper.make_node("Add", ["t", "b"], ["y"], name="bias"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_gemm_weights_of_a_token_linear_are_read_and_written(tmp_path, pnnx_installed):
    """pnnx turns a MatMul of tokens by a constant (a transformer's Linear, RTMPose's
    SimCC classifiers) into an ncnn Gemm holding B and C in the .bin."""
    rng = np.random.default_rng(0)
    model = token_linear(rng)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    nm = convert(model, tmp_path)
    param = nc.read_param(nm.param)
    assert "Gemm" in {lay.type for lay in param.layers}
    blobs = nc.read_bin(param, nm.bin.read_bytes())
    (gemm,) = [blobs[lay.name] for lay in param.layers if lay.type == "Gemm"]
    assert sorted(np.abs(gemm[0].data)) == sorted(np.abs(w.reshape(-1)))  # B, all of it
    assert nc.write_bin(param, blobs) == nm.bin.read_bytes()
    x = rng.normal(0, 1, (1, 6, 8)).astype(np.float32)
    assert check_conversion(model, nm, {"x": x})["y"] < 1e-4


def linear_then_fc(rng: np.random.Generator) -> onnx.ModelProto:
    """`token_linear`, then flattened into a Gemm (which pnnx writes as an InnerProduct)."""
    from onnx import helper, numpy_helper

    model = token_linear(rng)
    w2 = numpy_helper.from_array(rng.normal(0, 1, (4, 30)).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([1, 30], np.int64), "flat")
    model.graph.initializer.extend([w2, shape])
    model.graph.node.extend(
        [
            helper.make_node("Reshape", ["y", "flat"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "w2"], ["z"], name="fc", transB=1),
        ]
    )
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", 1, [1, 4]))
    return model


def test_a_token_linear_runs_int8_in_ncnn_as_the_plan_says(tmp_path, pnnx_installed):
    """pnnx's Gemm for a token Linear becomes an InnerProduct with the plan's per-channel
    scales and input threshold: ncnn int8 gives onnxruntime's Q/DQ result, and the fp32
    files hold the InnerProduct too (ncnn2int8 with model.table makes the same model)."""
    from graphkit.quant.qdq import insert_qdq
    from graphkit.runtime.ort import run

    rng = np.random.default_rng(1)
    model = linear_then_fc(rng)
    data = [{"x": rng.normal(0, 1, (1, 6, 8)).astype(np.float32)} for _ in range(4)]
    # minmax: nothing clipped (ncnn's int8 range is +-127, Q/DQ's goes down to -128)
    table = calibrated_table(model, data, "minmax")
    said: list[str] = []
    ex.export(table, model, tmp_path, samples=lambda: iter(data), log=said.append)
    assert not any("run float in ncnn" in line for line in said)  # both Linears int8
    d = tmp_path / "ncnn"
    fp32 = nc.read_param(d / "model.ncnn.param")
    int8 = nc.read_param(d / "model.int8.param")
    assert "Gemm" not in {lay.type for lay in fp32.layers}
    assert [lay.int8_term for lay in int8.layers if lay.type == "InnerProduct"] == [2, 2]
    net = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
    qdq = insert_qdq(model, table)
    for sample in data:
        want = run(qdq, sample)["z"]
        got = net.run({"in0": sample["x"]}, ["out0"])["out0"]
        assert np.abs(got.reshape(want.shape) - want).max() < 1e-4 * np.abs(want).max()
    ref = nc.NcnnNet(d / "model.ncnn.param", d / "model.ncnn.bin")  # the rewrite is exact
    want = run(model, data[0])["z"]
    got = ref.run({"in0": data[0]["x"]}, ["out0"])["out0"]
    assert np.abs(got.reshape(want.shape) - want).max() < 1e-4


def test_a_linear_over_a_3d_blob_keeps_its_values_in_ncnn(tmp_path, pnnx_installed):
    """Tokens of shape (1, 2, 6, 8): ncnn holds them as a 3-D blob, which an InnerProduct
    would flatten; whatever pnnx writes, the ncnn int8 model computes the product per row
    (as the plan's Q/DQ model does if int8, as the float model if left float)."""
    from onnx import TensorProto, helper, numpy_helper

    from graphkit.quant.qdq import insert_qdq
    from graphkit.runtime.ort import run

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.normal(0, 1, (8, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "linear4d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 5])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = [{"x": rng.normal(0, 1, (1, 2, 6, 8)).astype(np.float32)} for _ in range(3)]
    table = calibrated_table(model, data, "minmax")
    ex.export(table, model, tmp_path, samples=lambda: iter(data))
    d = tmp_path / "ncnn"
    int8 = nc.read_param(d / "model.int8.param")
    quantized = any(lay.int8_term for lay in int8.layers)
    reference = insert_qdq(model, table) if quantized else model
    net = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
    for sample in data:
        want = run(reference, sample)["y"]
        got = net.run({"in0": sample["x"]}, ["out0"])["out0"]
        assert np.abs(got.reshape(want.shape) - want).max() < 1e-4 * np.abs(want).max()


def test_a_model_of_variable_input_size_converts_at_the_samples_shape(tmp_path, pnnx_installed):
    """mmdeploy's dynamic exports leave height and width symbolic: pnnx needs a fixed
    shape, which the calibration samples give; without samples, one sentence says so."""
    from test_export_fixtures import two_conv

    model = two_conv(dynamic=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param
    rng = np.random.default_rng(3)
    data = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    table = calibrated_table(model, data, "minmax")
    with pytest.raises(GraphkitError, match=r"variable size .* \(pass --data"):
        ex.export(table, model, tmp_path / "none")
    assert not (tmp_path / "none" / "ncnn" / "model.int8.param").exists()
    ex.export(table, model, tmp_path, samples=lambda: iter(data))
    int8 = nc.read_param(tmp_path / "ncnn" / "model.int8.param")
    assert sum(1 for lay in int8.layers if lay.int8_term) == 2


def test_a_token_linear_kept_float_is_a_float_inner_product(tmp_path, pnnx_installed):
    rng = np.random.default_rng(1)
    model = linear_then_fc(rng)
    data = [{"x": rng.normal(0, 1, (1, 6, 8)).astype(np.float32)} for _ in range(4)]
    table = calibrated_table(model, data)
    ex.export(table, model, tmp_path, samples=lambda: iter(data), keep_float=("mm",))
    lines = (tmp_path / "ncnn" / "model.table").read_text().splitlines()
    assert len([x for x in lines if "_param_0" in x]) == 1  # only fc is int8
    int8 = nc.read_param(tmp_path / "ncnn" / "model.int8.param")
    assert sorted(lay.int8_term for lay in int8.layers if lay.type == "InnerProduct") == [0, 2]


def test_ncnn_float_gemm_keeps_pnnx_gemm_float(tmp_path, pnnx_installed):
    """int8_gemm=False (`--ncnn-float-gemm`): pnnx's Gemm stays, float; a Gemm's param 8
    is its N, not an int8 flag, so the evaluator's executor opens and runs it as float."""
    rng = np.random.default_rng(1)
    model = linear_then_fc(rng)
    data = [{"x": rng.normal(0, 1, (1, 6, 8)).astype(np.float32)} for _ in range(4)]
    table = calibrated_table(model, data)
    said: list[str] = []
    ex.export(table, model, tmp_path, samples=lambda: iter(data), int8_gemm=False, log=said.append)
    # the plan's int8 MatMul is float there, and the log says so
    assert any("the plan's int8 1 MatMul run float in ncnn" in line for line in said)
    param = nc.read_param(tmp_path / "ncnn" / "model.ncnn.param")
    assert {"Gemm", "InnerProduct"} <= {lay.type for lay in param.layers}
    lines = (tmp_path / "ncnn" / "model.table").read_text().splitlines()
    assert len([x for x in lines if "_param_0" in x]) == 1
    from graphkit.evaluators.executors import open_executor

    executor = open_executor(str(tmp_path / "ncnn" / "model.int8.param"), "ncnn", 1)
    assert [i.quantized for i in executor.tensor_info().values() if i.op_type == "Gemm"] == [False]


def test_token_linears_stay_float_when_ncnn_cannot_tell_their_shapes(
    tmp_path, pnnx_installed, monkeypatch
):
    """The shapes come from one ncnn run; if that fails the export still succeeds, the
    Gemm float (as before the rewrite existed), and the log says why."""
    from graphkit.backends.ncnn import linear

    def fails(*_a, **_k):
        raise GraphkitError("ncnn could not compute blob '3'")

    monkeypatch.setattr(linear, "gemm_input_shapes", fails)
    rng = np.random.default_rng(1)
    model = linear_then_fc(rng)
    data = [{"x": rng.normal(0, 1, (1, 6, 8)).astype(np.float32)} for _ in range(4)]
    said: list[str] = []
    ex.export(
        calibrated_table(model, data), model, tmp_path, samples=lambda: iter(data), log=said.append
    )
    assert any("Gemm layers stay float" in line for line in said)
    int8 = nc.read_param(tmp_path / "ncnn" / "model.int8.param")
    assert "Gemm" in {lay.type for lay in int8.layers}


@pytest.mark.parametrize(
    "change, shape",
    [
        ({}, (6, 8)),
        ({0: "5.000000e-01"}, (6, 8)),  # alpha
        ({4: "1"}, (6, 8)),  # constant A
        ({2: "1"}, (6, 8)),  # transposed A
        ({10: "1"}, (6, 8)),  # a bias per row
        ({14: "1"}, (6, 8)),  # transposed output
        ({}, (2, 6, 8)),  # a 3-D blob: InnerProduct would flatten it
        ({}, (6, 7)),  # rows not of width K
    ],
)
def test_only_a_plain_row_times_constant_gemm_becomes_inner_product(change, shape):
    from graphkit.backends.ncnn.linear import linear_gemm

    params = {2: "0", 3: "1", 4: "0", 5: "1", 6: "1", 7: "6", 8: "5", 9: "8", 10: "4"}
    layer = nc.Layer("Gemm", "g", ["a"], ["b"], {**params, **change})
    assert linear_gemm(layer, shape) == (not change and shape == (6, 8))


def test_inner_product_weight_is_gemm_b_as_rows_of_outputs():
    """transB=1 stores B as N rows of K (the InnerProduct layout), transB=0 as K rows of N."""
    from graphkit.backends.ncnn.linear import as_inner_product

    w = np.arange(15, dtype=np.float32).reshape(5, 3)  # N=5 outputs, K=3
    c = np.arange(5, dtype=np.float32)
    for trans_b, stored in ((1, w), (0, w.T)):
        params = {2: "0", 3: str(trans_b), 4: "0", 5: "1", 6: "1", 7: "2", 8: "5", 9: "3", 10: "4"}
        layer = nc.Layer("Gemm", "g", ["a"], ["b"], params)
        blobs = {"g": [nc.Blob("B", stored.reshape(-1)), nc.Blob("C", c)]}
        param, out, done = as_inner_product(nc.Param([layer], 2), blobs, {"a": (2, 3)})
        assert done == ["g"] and param.layers[0].type == "InnerProduct"
        assert param.layers[0].params == {0: "5", 1: "1", 2: "15"}
        np.testing.assert_array_equal(out["g"][0].data, w.reshape(-1))
        np.testing.assert_array_equal(out["g"][1].data, c)
        assert nc.read_bin(param, nc.write_bin(param, out))["g"][0].data.size == 15


def test_quoted_string_params_keep_their_key():
    """pnnx writes Reshape shapes as strings with commas (6="0w,-1"): not an array, so the
    key stays 6 when the param file is written again (ncnn cannot load -23306="...")."""
    text = '7767517\n2 2\nInput in0 0 1 in0\nReshape r 1 1 in0 out 6="0w,-1" -23300=2,3,4\n'
    layer = nc.parse_param(text).layers[1]
    assert layer.params == {6: '"0w,-1"', 0: "2,3,4"}
    assert layer.line().split()[-2:] == ['6="0w,-1"', "-23300=2,3,4"]


def test_vit_attention_converts_after_split_qkv(tmp_path, pnnx_installed):
    """A fused q/k/v head reshape of 5 dimensions (ViTPose, timm) is made 4-D before pnnx,
    which otherwise leaves it as Tensor.reshape, a layer ncnn lacks."""
    from test_passes_attention import attention

    model = attention("gather")
    nm = convert(model, tmp_path)
    x = np.random.default_rng(0).normal(0, 1, (1, 5, 8)).astype(np.float32)
    assert check_conversion(model, nm, {"x": x})["y"] < 1e-4


def test_fp16_weights_are_read_and_written_with_their_tag(converted):
    _, _, param, blobs = converted
    half = {
        k: [nc.Blob(b.role, b.data.astype(np.float16)) if i == 0 else b for i, b in enumerate(v)]
        for k, v in blobs.items()
    }
    data = nc.write_bin(param, half)
    assert struct.unpack_from("<I", data, 0)[0] == 0x01306B47
    back = nc.read_bin(param, data)
    for k, v in half.items():
        assert back[k][0].data.dtype == np.float16
        assert np.array_equal(back[k][0].data, v[0].data)
        assert np.array_equal(back[k][1].data, v[1].data)


def test_truncated_or_foreign_files_are_refused(converted):
    _, nm, param, _ = converted
    with pytest.raises(GraphkitError, match="shorter|bytes"):
        nc.read_bin(param, nm.bin.read_bytes()[:-8])
    with pytest.raises(GraphkitError, match="not account"):
        nc.read_bin(param, nm.bin.read_bytes() + b"\0" * 8)
    with pytest.raises(GraphkitError, match="magic"):
        nc.parse_param("hello\n1 1\n")


def _layer(type_, name, **params):
    return nc.Layer(type_, name, ["a"], ["b"], {int(k[1:]): str(v) for k, v in params.items()})


def test_table_matches_golden_file_and_ncnn2table_weight_rules():
    conv1 = _layer("Convolution", "conv1", p0=2, p1=1, p6=2)
    conv3 = _layer("Convolution", "conv3", p0=1, p1=3, p6=9)  # 3x3 s1 d1: 31 / absmax
    dw = _layer("ConvolutionDepthWise", "dw", p0=2, p1=1, p6=2, p7=2)
    t = ex.NcnnTable()
    t.weights["conv1"] = ex.weight_scales(
        conv1, np.array([0.5, -0.25, 2.0, -1.0], np.float32).reshape(2, 2).ravel()[[0, 1, 3, 2]]
    )
    t.weights["conv3"] = ex.weight_scales(
        conv3, np.r_[np.full(8, 0.1), -0.5].astype(np.float32), winograd_6bit=True
    )
    t.weights["dw"] = ex.weight_scales(dw, np.array([1.0, -0.25], np.float32))
    t.activations.update({"conv1": 127 / 63.5, "conv3": 127 / 127.0, "dw": 127 / 254.0})
    assert t.text() == (GOLDEN / "ncnn_table.txt").read_text()
    assert ex.weight_scales(conv3, np.full(9, 0.5, np.float32), winograd_6bit=False) == [254.0]


layer_names = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1, max_size=20
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        layer_names, st.lists(st.floats(1e-3, 1e5), min_size=1, max_size=4), min_size=1, max_size=5
    )
)
def test_table_round_trips_or_refuses_names_clearly(entries):
    t = ex.NcnnTable(weights=dict(entries), activations={k: v[0] for k, v in entries.items()})
    if any("_param_" in k for k in entries):
        with pytest.raises(GraphkitError, match="cannot go in an ncnn table"):
            t.text()
        return
    back = ex.parse_table(t.text())
    assert list(back.weights) == list(entries) and list(back.activations) == list(entries)
    for k, v in entries.items():
        assert back.weights[k] == pytest.approx(v, rel=1e-8)


@pytest.mark.parametrize("bad", ["has space", "tab\there", ""])
def test_names_with_whitespace_are_refused(bad):
    with pytest.raises(GraphkitError, match="cannot go in an ncnn table"):
        ex.NcnnTable(activations={bad: 1.0}).text()


def test_int8_bin_layout_is_what_ncnn2int8_writes(converted):
    _, _, param, blobs = converted
    name = next(lay.name for lay in param.layers if lay.type == "Convolution")
    layer = param.layer(name)
    w = blobs[name][0].data
    t = ex.NcnnTable(weights={name: ex.weight_scales(layer, w)}, activations={name: 12.5})
    ptext, data = ex.to_int8(param, blobs, t)
    p8 = nc.parse_param(ptext)
    assert p8.layer(name).params[8] == "2"
    # the quantized layer is first in the bin: tag, int8 weights padded to 4, bias, scales
    assert struct.unpack_from("<I", data, 0)[0] == 0x000D4B38
    n = w.size
    q = np.frombuffer(data, np.int8, n, 4)
    assert np.array_equal(q, ex.quantize_weights(w, t.weights[name]))
    off = 4 + (n + 3) // 4 * 4
    nout = int(layer.get(0))
    bias = np.frombuffer(data, np.float32, nout, off)
    assert np.array_equal(bias, blobs[name][1].data)
    scales = np.frombuffer(data, np.float32, nout + 1, off + 4 * nout)
    assert np.allclose(scales[:nout], t.weights[name]) and scales[nout] == np.float32(12.5)
    assert np.abs(q).max() <= 127


def test_quantize_weights_rounds_half_away_from_zero_and_clamps():
    got = ex.quantize_weights(np.array([0.5, -0.5, 1.5, -2.49, 300.0, -300.0], np.float32), [1.0])
    assert got.tolist() == [1, -1, 2, -2, 127, -127]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pnnx_installed):
    model = tiny_cnn()
    data = feeds(24)
    table = calibrated_table(model, data)
    out = tmp_path_factory.mktemp("export")
    ex.export(
        table, model, out, samples=lambda: iter(data), keep_float=("conv3x3",), compare_samples=0
    )
    return model, table, out / "ncnn", data


def test_int8_model_runs_in_ncnn_and_tracks_fp32(exported):
    _, _, d, _ = exported
    fp = nc.NcnnNet(d / "model.ncnn.param", d / "model.ncnn.bin")
    q = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
    param = nc.read_param(d / "model.int8.param")
    tops = [lay.tops[0] for lay in param.layers if lay.get(8)]
    table = ex.parse_table((d / "model.table").read_text())
    fp_param = nc.read_param(d / "model.ncnn.param")
    requantized = ex.requantized_tops(fp_param, table)
    assert requantized  # int8 codes on those tops: compared after dividing by the scale
    r = ex.compare(fp, q, feeds(8, seed=11), ["out0"], tops, {"x": "in0"}, requantized)
    print(f"tiny fixture: cosine {r['cosine']['out0']:.5f}, SQNR dB {r['sqnr_db']}")
    assert r["cosine"]["out0"] > 0.99
    assert all(v > 20 for v in r["sqnr_db"].values())
    same = fp.run({"in0": feeds(1, seed=11)[0]["x"]}, ["out0"])["out0"]
    assert not np.array_equal(same, q.run({"in0": feeds(1, seed=11)[0]["x"]}, ["out0"])["out0"])


def test_int8_weights_equal_ncnn_own_load_time_quantization(exported):
    """ncnn quantizes fp32 weights itself when int8_scale_term is set: same outputs."""
    _, _, d, data = exported
    p8 = nc.read_param(d / "model.int8.param")
    fp_param = nc.read_param(d / "model.ncnn.param")
    fp_blobs = nc.read_bin(fp_param, (d / "model.ncnn.bin").read_bytes())
    q_blobs = nc.read_bin(p8, (d / "model.int8.bin").read_bytes())
    mixed = {}
    for lay in p8.layers:
        if lay.name not in q_blobs:
            continue
        if lay.get(8):
            scales = [b for b in q_blobs[lay.name] if b.role.endswith("_scales")]
            mixed[lay.name] = fp_blobs[lay.name] + scales  # fp32 weights + scales
        else:
            mixed[lay.name] = q_blobs[lay.name]
    (d / "runtime.bin").write_bytes(nc.write_bin(p8, mixed))
    ours = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
    theirs = nc.NcnnNet(d / "model.int8.param", d / "runtime.bin", int8=True)
    for f in data[:4]:
        a = ours.run({"in0": f["x"]}, ["out0"])["out0"]
        b = theirs.run({"in0": f["x"]}, ["out0"])["out0"]
        assert np.array_equal(a, b)


def test_keep_float_layer_has_no_lines_and_stays_fp32(exported):
    _, _, d, _ = exported
    table = ex.parse_table((d / "model.table").read_text())
    p8 = nc.read_param(d / "model.int8.param")
    quantized = {lay.name for lay in p8.layers if lay.get(8)}
    assert quantized == set(table.activations) == set(table.weights)
    assert len(quantized) == 4  # conv1, dw, pw, fc; conv3x3 kept float
    blobs = nc.read_bin(p8, (d / "model.int8.bin").read_bytes())
    float_convs = [lay.name for lay in p8.layers if lay.type == "Convolution" and not lay.get(8)]
    assert len(float_convs) == 1 and blobs[float_convs[0]][0].data.dtype == np.float32


def test_without_data_scales_come_from_the_table_through_weight_twins(exported, tmp_path):
    model, table, _, _ = exported
    ex.export(table, model, tmp_path)
    t = ex.parse_table((tmp_path / "ncnn" / "model.table").read_text())
    param = nc.read_param(tmp_path / "ncnn" / "model.ncnn.param")
    blobs = nc.read_bin(param, (tmp_path / "ncnn" / "model.ncnn.bin").read_bytes())
    twins = ex.match_layers(model, param, blobs)
    assert sorted(n.name for n in twins.values()) == ["conv1", "conv3x3", "dw", "fc", "pw"]
    for layer, node in twins.items():
        assert t.activations[layer] == pytest.approx(
            127 / table.activations[node.input[0]].amax, rel=1e-6
        )


def test_output_names_are_written_beside_the_params_for_eval(exported):
    """pnnx renames outputs out0, out1, ...; the export says which ONNX output each is, and
    the evaluator's ncnn executor reads it, so decoders of several outputs need no
    decode.ncnn_outputs."""
    import json

    from graphkit.evaluators.evaluate import output_blobs
    from graphkit.evaluators.executors import open_executor
    from graphkit.pose.decoders import build_decoder

    _, _, ncnn_dir, _ = exported
    assert json.loads((ncnn_dir / "model.outputs.json").read_text()) == {"outputs": {"y": "out0"}}
    executor = open_executor(str(ncnn_dir / "model.int8.param"), "ncnn", 1)
    assert executor.onnx_outputs == {"y": "out0"}
    decoder = build_decoder({"type": "simcc", "x": "y", "y": "y"})
    assert output_blobs(executor, decoder) == {"y": "out0"}
    given = build_decoder({"type": "simcc", "x": "y", "y": "y", "ncnn_outputs": {"y": "bad"}})
    with pytest.raises(GraphkitError, match="names blob 'bad'"):  # the spec's map comes first
        output_blobs(executor, given)


def test_keep_float_name_without_twin_is_refused(exported, tmp_path):
    model, table, _, _ = exported
    with pytest.raises(GraphkitError):
        ex.export(table, model, tmp_path, keep_float=("relu1",))


@pytest.mark.slow
def test_real_model_int8_tracks_fp32_on_val2017_crops(assets, tmp_path, pnnx_installed):
    """posenet (NHWC tf2onnx export) through pnnx, calibrated on 4 train crops."""
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.model import load_model
    from graphkit.quant.calibrate import calibrate

    root = Path(__file__).resolve().parents[1]
    spec = load_input_spec(root / "examples" / "models" / "posenet.yaml")
    model = load_model(assets / "models" / "posenet.onnx")
    table = calibrate(model, spec, method="mse", limit=4)

    def calib():
        return (s.feeds for s in itertools.islice(iter_samples(spec), 4))

    ex.export(table, model, tmp_path, samples=calib, compare_samples=0, threads=2)
    d = tmp_path / "ncnn"
    val = spec.with_source(
        ann=str(assets / "coco-mini/annotations/person_keypoints_val2017.json"),
        images=str(assets / "coco-mini/val2017"),
    )
    fp = nc.NcnnNet(d / "model.ncnn.param", d / "model.ncnn.bin", threads=2)
    q = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True, threads=2)
    crops = [s.feeds for s in itertools.islice(iter_samples(val), 4)]
    r = ex.compare(fp, q, crops, fp.outputs, input_map={spec.input.name: "in0"})
    # the same table through onnxruntime's int8 Q/DQ kernels: ncnn must agree with it
    from graphkit.backends.qdq_rules import plain_qdq
    from graphkit.runtime.ort import make_session

    s_fp, s_q = make_session(model), make_session(plain_qdq(table, model))
    names = [o.name for o in s_fp.get_outputs()]
    ort_cos = {}
    for f in crops:
        for i, (a, b) in enumerate(zip(s_fp.run(names, f), s_q.run(names, f))):
            a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
            ort_cos.setdefault(f"out{i}", []).append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    print("posenet int8 vs fp32 cosine, ncnn:", r["cosine"])
    print(
        "posenet int8 vs fp32 cosine, onnxruntime Q/DQ:",
        {k: float(np.mean(v)) for k, v in ort_cos.items()},
    )
    assert r["samples"] == 4
    assert r["cosine"]["out1"] > 0.98  # heatmaps
    for k, v in ort_cos.items():
        assert abs(r["cosine"][k] - float(np.mean(v))) < 0.03


def test_pnnx_binary_is_found_without_importing_pnnx_or_torch(pnnx_installed):
    import subprocess
    import sys

    code = (
        "import sys\nfrom graphkit.backends.ncnn.convert import pnnx_binary\n"
        "path = pnnx_binary()\n"
        "print(path, 'pnnx' in sys.modules, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path, imported_pnnx, imported_torch = r.stdout.split()
    assert (imported_pnnx, imported_torch) == ("False", "False")
    assert Path(path).read_bytes()[:4] == b"\x7fELF"  # the native binary, not pip's script


PAIRS_PARAM = """7767517
8 10
Input            in      0 1 x
Convolution      a       1 1 x a 0=4 1=1 6=12
Split            s       1 2 a a1 a2
Convolution      b       1 1 a1 b 0=4 1=1 6=16
ConvolutionDepthWise c   1 1 a2 c 0=4 1=3 6=36 7=4
Convolution      d       1 1 c d 0=4 1=1 6=16
ReLU             r       1 1 d r
Convolution      e       1 1 r e 0=4 1=1 6=16
"""


@pytest.mark.parametrize(
    "int8, pairs",
    [
        ({"a", "b", "c", "d", "e"}, {"a": "b", "c": "d"}),  # d -> ReLU layer -> e: no fusion
        ({"a", "c", "d", "e"}, {"c": "d"}),  # a Split reader is float: a writes float
        ({"a", "b", "c", "e"}, {"a": "b"}),  # d float: c writes float
    ],
)
def test_requantize_fusion_follows_ncnn2int8s_rules(int8, pairs):
    assert ex.requantize_pairs(nc.parse_param(PAIRS_PARAM), int8) == pairs


def test_requantized_int8_model_runs_like_the_unfused_one(exported):
    _, _, d, data = exported
    param = nc.read_param(d / "model.ncnn.param")
    blobs = nc.read_bin(param, (d / "model.ncnn.bin").read_bytes())
    table = ex.parse_table((d / "model.table").read_text())
    fused = ex.requantize_pairs(param, set(table.activations))
    assert fused  # the tiny net has a depthwise conv read only by a 1x1 conv
    p8 = nc.read_param(d / "model.int8.param")
    for name, reader in fused.items():
        layer = p8.layer(name)
        assert int(layer.params[8]) > 100
        got = nc.read_bin(p8, (d / "model.int8.bin").read_bytes())[name]
        assert got[-1].role == "top_scales"
        assert got[-1].data[0] == np.float32(table.activations[reader])
    ptext, bbytes = ex.to_int8(param, blobs, table, requantize=False)
    (d / "plain.param").write_text(ptext)
    (d / "plain.bin").write_bytes(bbytes)
    fused_net = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
    plain_net = nc.NcnnNet(d / "plain.param", d / "plain.bin", int8=True)
    fp = nc.NcnnNet(d / "model.ncnn.param", d / "model.ncnn.bin")
    for sample in data[:4]:
        f = {"in0": sample["x"]}
        a, b = fused_net.run(f, ["out0"])["out0"], plain_net.run(f, ["out0"])["out0"]
        ref = fp.run(f, ["out0"])["out0"]
        # the same int8 arithmetic, the requantize done in one step: at most a rounding apart
        assert np.abs(a - b).max() <= 0.05 * np.abs(ref).max() + 1e-6


def test_executor_reads_requantized_blobs_back_in_float(exported):
    from graphkit.evaluators.executors import open_executor

    _, _, d, data = exported
    q, fp = open_executor(d / "model.int8.param"), open_executor(d / "model.ncnn.param")
    assert q.requantized and not fp.requantized
    for top in q.requantized:
        a = q.run({"in0": data[0]["x"]}, [top])[top]
        b = fp.run({"in0": data[0]["x"]}, [top])[top]
        # int8 codes would be up to 127 where the float values are a few units
        assert np.abs(a - b).max() <= 0.1 * np.abs(b).max()
