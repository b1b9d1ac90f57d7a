"""`graphkit.quant.shift`: never-negative activations shifted onto signed int8 keep the
model's function and the uint8 plan's grid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from tiny import model_of

from graphkit.quant.qdq import insert_qdq
from graphkit.quant.shift import shift_for_signed, shiftable
from graphkit.quant.table import ActivationEntry, CalibrationTable
from graphkit.runtime.ort import make_session


def _model(opset: int = 13) -> onnx.ModelProto:
    """x -> c1 -> Relu (r1) -> c2 3x3 stride 2 pad 1 -> Clip(0, 6) (r2) -> depthwise 3x3
    SAME_UPPER (d) -> Relu (r3) -> 1x1 (y1), 3x3 dilated (y2) and a max pool (y4);
    Relu(x) (rx) -> 1x1 (y3) and a MatMul (y5). r1 and r2 fold the shift into the Conv
    before them, r3 (also read by the pool) takes a Sub, rx (read by a MatMul) stays."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.2, (8, 8, 3, 3)),
        "w3": rng.normal(0, 0.3, (8, 1, 3, 3)),
        "b3": rng.normal(0, 0.1, 8),
        "w4": rng.normal(0, 0.3, (4, 8, 1, 1)),
        "w5": rng.normal(0, 0.3, (4, 8, 3, 3)),
        "w6": rng.normal(0, 0.3, (2, 3, 1, 1)),
        "wm": rng.normal(0, 0.3, (11, 2)),
    }
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    clip = (
        [helper.make_node("Clip", ["c2"], ["r2"], name="clip", min=0.0, max=6.0)]
        if opset < 11
        else [helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip")]
    )
    if opset >= 11:
        inits |= {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2"], ["c2"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        *clip,
        helper.make_node(
            "Conv", ["r2", "w3", "b3"], ["d"], name="dw", group=8, auto_pad="SAME_UPPER"
        ),
        helper.make_node("Relu", ["d"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["y1"], name="pw"),
        helper.make_node(
            "Conv", ["r3", "w5"], ["y2"], name="dil", pads=[2, 2, 2, 2], dilations=[2, 2]
        ),
        helper.make_node("Relu", ["x"], ["rx"], name="relux"),
        helper.make_node("Conv", ["rx", "w6"], ["y3"], name="cx"),
        helper.make_node("MaxPool", ["r3"], ["y4"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("MatMul", ["rx", "wm"], ["y5"], name="mm"),
    ]
    return model_of(
        nodes,
        [("x", [1, 3, 11, 11])],
        [
            ("y1", [1, 4, 6, 6]),
            ("y2", [1, 4, 6, 6]),
            ("y3", [1, 2, 11, 11]),
            ("y4", [1, 8, 5, 5]),
            ("y5", [1, 3, 11, 2]),
        ],
        inits,
        opset,
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return make_session(model).run(None, {"x": x})


def _inputs(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, (1, 3, 11, 11)).astype(np.float32) for _ in range(n)]


def _plan(model: onnx.ModelProto) -> CalibrationTable:
    """Thresholds from the data; r1, r2, r3 unsigned."""
    from graphkit.quant.calibrate import build_table
    from graphkit.quant.collect import collect, select_tensors

    feeds = [{"x": x} for x in _inputs()]
    stats = collect(model, lambda: iter(feeds), select_tensors(model), overlap=False)
    plan = build_table(model, stats, "minmax")
    plan.set_unsigned(["r1", "r2", "r3", "rx"])
    return plan


@pytest.mark.parametrize("opset", [13, 10])
def test_shifted_model_computes_what_the_model_computes(opset):
    model = _model(opset)
    plan = _plan(model)
    plan.weights = {}  # float weights: the corrections sum them as they are
    _, shifted, names = shift_for_signed(plan, model)
    assert shiftable(model, ["r1", "r2", "r3", "rx"]) == ["r1", "r2", "r3"]
    # new names: nothing pairs a shifted tensor with the original's (graphkit diff)
    assert names == ["r1_shifted", "r2_shifted", "r3_shifted"]
    subs = [n for n in shifted.graph.node if n.op_type == "Sub"]
    assert [n.output[0] for n in subs] == ["r3_shifted"]  # r1 and r2: folded into c1, c2
    outputs = {o for n in shifted.graph.node for o in n.output}
    assert "r3" in outputs and not {"r1", "r2"} & outputs  # the pool still reads r3
    for x in _inputs():
        for want, got in zip(_run(model, x), _run(shifted, x)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_shifted_int8_matches_the_uint8_plan_and_beats_storing_it_signed():
    """The shifted tensors keep the uint8 step: the signed Q/DQ model of the shifted plan
    is far closer to the uint8 Q/DQ model than the same plan stored signed (half the
    steps), which is what a signed backend got before; only rounding ties and the top
    uint8 level differ."""
    from graphkit.metrics import sqnr_db, squared_error
    from graphkit.quant.deploy import fill_integers

    plan = _plan(_model())
    fill_integers(plan, _model())
    # the weights every backend gets (q * scale): the consumers' corrections sum them
    model = plan.deploy_model(_model())
    shifted_plan, shifted, names = shift_for_signed(plan, model)
    assert shifted_plan.unsigned_activations() == [] and plan.unsigned_activations()
    for name in names:
        assert shifted_plan.activations[name].scale == pytest.approx(
            plan.activations[name.removesuffix("_shifted")].amax / 255
        )
    signed = shift_for_signed(plan, model)[0]
    signed.activations = {
        k: ActivationEntry(**{**vars(e), "unsigned": False}) for k, e in plan.activations.items()
    }
    uint8 = insert_qdq(model, plan)
    got = {"shifted": insert_qdq(shifted, shifted_plan), "signed": insert_qdq(model, signed)}
    error = {k: 0.0 for k in got}
    signal = 0.0
    for x in _inputs():
        want = _run(uint8, x)[:2]  # y1, y2 read only shifted tensors
        signal += sum(float((w.astype(np.float64) ** 2).sum()) for w in want)
        for k, m in got.items():
            error[k] += sum(squared_error(w, g) for w, g in zip(want, _run(m, x)[:2]))
    assert sqnr_db(signal, error["shifted"]) > sqnr_db(signal, error["signed"]) + 15


def test_ncnn_int8_of_a_uint8_plan_runs_what_onnxruntime_measured(tmp_path, pnnx_installed):
    """ncnn stores int8 only: the export shifts the plan's uint8 activations (clips and
    border maps converted by pnnx) and ncnn int8 tracks onnxruntime's uint8 Q/DQ model far
    closer than the same plan stored signed."""
    from graphkit.backends import export_all
    from graphkit.backends.ncnn import runtime as nc
    from graphkit.metrics import sqnr_db, squared_error
    from graphkit.quant.deploy import fill_integers

    plan = _plan(_model())
    fill_integers(plan, _model())
    signed = shift_for_signed(plan, _model())[0]  # every entry signed, same thresholds
    signed.activations = {
        k: ActivationEntry(**{**vars(e), "unsigned": False}) for k, e in plan.activations.items()
    }
    feeds = [{"x": x} for x in _inputs()]
    lines: list[str] = []
    for tag, p in (("uint8", plan), ("signed", signed)):
        export_all(
            p, _model(), ["ncnn"], tmp_path / tag, samples=lambda: iter(feeds), log=lines.append
        )
    assert any("3 of the plan's 4 unsigned activations shifted onto int8" in x for x in lines)
    # pnnx folds the Pads into the convs' pad_value; the int8 convs get a float Padding
    # before them instead (ncnn's int8 kernels do not pad with pad_value reliably)
    fp32 = (tmp_path / "uint8" / "ncnn" / "model.ncnn.param").read_text()
    int8 = (tmp_path / "uint8" / "ncnn" / "model.int8.param").read_text()
    assert " 18=" in fp32 and " 18=" not in int8 and int8.count("Padding ") == 2
    want = make_session(insert_qdq(plan.deploy_model(_model()), plan))
    error = {"uint8": 0.0, "signed": 0.0}
    signal = 0.0
    for f in feeds:
        ref = want.run(None, f)[:2]
        signal += sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
        for tag in error:
            d = tmp_path / tag / "ncnn"
            net = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
            got = net.run({"in0": f["x"]}, ["out0", "out1"])
            error[tag] += sum(
                squared_error(r, got[o].reshape(r.shape)) for r, o in zip(ref, ("out0", "out1"))
            )
    assert sqnr_db(signal, error["uint8"]) > sqnr_db(signal, error["signed"]) + 6


def test_a_plan_of_every_tensor_keeps_covering_every_tensor_after_the_shift():
    """TensorRT's cache wants a range for each tensor: the shifted model's new tensors (a
    Sub's unshifted input, a Conv's output before its border Add) get entries, and every
    entry still bounds its tensor (minmax ranges: nothing may exceed them)."""
    from graphkit.quant.calibrate import build_table
    from graphkit.quant.collect import collect, select_tensors

    model = _model()
    feeds = [{"x": x} for x in _inputs()]
    stats = collect(model, lambda: iter(feeds), select_tensors(model, "all"), overlap=False)
    plan = build_table(model, stats, "minmax")
    plan.weights = {}
    plan.set_unsigned(["r1", "r2", "r3", "rx"])
    shifted_plan, shifted, moved = shift_for_signed(plan, model)
    outputs = [o for n in shifted.graph.node for o in n.output]
    assert set(outputs) <= set(shifted_plan.activations)  # every tensor has a range
    assert {"r3", "d_before_shift_border", "r1_shifted_pad_c2"} <= set(shifted_plan.activations)
    probe = onnx.ModelProto()
    probe.CopyFrom(shifted)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs if t not in known)
    names = [o.name for o in probe.graph.output]
    for x in _inputs():
        for name, value in zip(names, make_session(probe).run(None, {"x": x})):
            if name in shifted_plan.activations:
                # a shifted tensor's (and its Pads') top uint8 level is one step above its grid
                top = 128 / 127 if name.split("_pad_")[0] in moved else 1.0
                amax = shifted_plan.activations[name].amax * top
                assert np.abs(value).max() <= amax * (1 + 1e-5) + 1e-6, name


def test_a_tensor_read_by_a_1d_conv_is_not_shifted():
    from graphkit.quant.table import ActivationEntry as Entry

    w = np.ones((2, 3, 3), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="c1", pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1]),
    ]
    model = model_of(
        nodes,
        [("x", [1, 3, 8])],
        [("y", [1, 2, 8])],
        {"w": w, "w2": np.ones((2, 2, 3), np.float32)},
    )
    assert shiftable(model, ["r"]) == []
    plan = CalibrationTable(method="minmax", activations={"r": Entry(amax=1.0, unsigned=True)})
    assert shift_for_signed(plan, model)[2] == []


def test_a_tensor_whose_shape_inference_cannot_tell_is_sized_by_one_run():
    """A Reshape to a computed shape (a channel shuffle's) leaves the tensor's height and
    width unknown to shape inference; the border map needs them, so one onnxruntime run
    tells them, and the shifted model still computes what the model computes."""
    from graphkit.irgraph import to_ir, value_shapes

    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32),
        "w2": rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Shape", ["r1"], ["s"], name="shape"),
        helper.make_node("Reshape", ["r1", "s"], ["rr"], name="reshape"),
        helper.make_node("Conv", ["rr", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1]),
    ]
    model = model_of(nodes, [("x", [1, 3, 10, 10])], [("y", [1, 4, 10, 10])], inits)
    shape = value_shapes(to_ir(model)).get("rr")
    assert shape is None or None in shape[2:]  # inference cannot tell it
    assert shiftable(model, ["rr"]) == ["rr"]
    plan = CalibrationTable(
        method="minmax", activations={"rr": ActivationEntry(amax=4.0, unsigned=True)}
    )
    _, shifted, names = shift_for_signed(plan, model)
    assert names == ["rr_shifted"]
    for x in _inputs(2):
        x = x[:, :, :10, :10]
        np.testing.assert_allclose(_run(shifted, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-4)
