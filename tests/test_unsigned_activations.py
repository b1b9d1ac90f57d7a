"""Activations never negative on the data stored as uint8 [0, amax] where a backend can."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from quant_planted import INPUT, feeds, make_model, table_for, write_files

from graphkit.backends import export_all
from graphkit.backends.qdq_rules import amct_qdq, tensorrt_qdq
from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.metrics import sqnr_db
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.quantize import nonnegative, quantize, recipe_of
from graphkit.quant.table import QuantPlan
from graphkit.runtime import int8_kernels
from graphkit.runtime.ort import make_session

quantize_module = importlib.import_module("graphkit.quant.quantize")


def _plan(unsigned: bool, model: onnx.ModelProto | None = None) -> QuantPlan:
    plan = table_for(model or make_model(), feeds(6), "mse")
    for name in nonnegative(plan):
        plan.activations[name].unsigned = unsigned
    return plan


def _quantizers(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Quantized tensor -> (scale, zero point) of its QuantizeLinear."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[0]: (inits[n.input[1]], inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }


def test_only_tensors_never_negative_on_the_data_are_candidates():
    plan = _plan(False)
    assert sorted(nonnegative(plan)) == ["r1", "r2"]  # the Relu outputs; not the input x
    assert plan.activations[INPUT].min < 0


def test_an_unsigned_activation_is_uint8_over_zero_to_amax_in_the_onnxruntime_qdq():
    plan = _plan(True)
    q = _quantizers(insert_qdq(make_model(), plan))
    for name in ("r1", "r2"):
        scale, zp = q[name]
        assert zp.dtype == np.uint8 and zp == 0
        assert scale == pytest.approx(plan.activations[name].amax / 255)
    scale, zp = q[INPUT]
    assert zp.dtype == np.int8 and scale == pytest.approx(plan.activations[INPUT].amax / 127)


def _relu_chain_sqnr(unsigned: bool, optimize: bool, as_written: bool = False) -> float:
    """Output SQNR of the planted chain's Q/DQ model; optimize=False runs the Q/DQ nodes
    as written (the grid itself), optimize=True onnxruntime's fused integer kernels."""
    model, samples = make_model(outlier=0.2), feeds(6, seed=9)  # no weight outlier
    ref = make_session(model)
    qdq = insert_qdq(model, _plan(unsigned, model))
    sess = make_session(qdq, optimize=optimize, as_written=as_written)
    signal = noise = 0.0
    for f in samples:
        (a,), (b,) = ref.run(None, f), sess.run(None, f)
        signal += float(np.sum(a.astype(np.float64) ** 2))
        noise += float(np.sum((a - b).astype(np.float64) ** 2))
    return sqnr_db(signal, noise)


def test_unsigned_storage_lowers_the_int8_error_of_relu_outputs():
    assert _relu_chain_sqnr(True, optimize=False) > _relu_chain_sqnr(False, optimize=False) + 1


def test_the_kernel_probe_predicts_whether_onnxruntime_keeps_the_uint8_gain():
    """Where the probe finds onnxruntime's uint8 x int8 Conv exact, the fused model keeps
    the grid's gain; where it saturates (AVX2 without VNNI), the fused model loses to it."""

    grid, fused = _relu_chain_sqnr(True, optimize=False), _relu_chain_sqnr(True, optimize=True)
    got, want = int8_kernels.probe()  # the kernels themselves, whatever the environment says
    if got == pytest.approx(want, abs=1e-3):
        assert fused == pytest.approx(grid, abs=0.5)
        assert fused > _relu_chain_sqnr(False, optimize=True) + 1
    else:
        assert fused < grid - 3


def test_sessions_that_score_candidates_run_the_grid_as_written_on_any_cpu():
    """What the recipe measures is the grid, on CPUs whose kernels saturate too."""
    grid = _relu_chain_sqnr(True, optimize=False)
    assert _relu_chain_sqnr(True, optimize=True, as_written=True) == pytest.approx(grid, abs=0.5)


@pytest.mark.parametrize("exact", [True, False])
def test_the_scoring_level_is_fused_only_where_the_int8_kernels_are_exact(monkeypatch, exact):
    monkeypatch.setattr(int8_kernels, "uint8_conv_exact", lambda: exact)
    sess = make_session(insert_qdq(make_model(), _plan(True)), as_written=True)
    fused = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert sess.get_session_options().graph_optimization_level == (fused if exact else basic)


@pytest.fixture
def fresh_probe():
    """uint8_conv_exact() is cached per process: cleared before and after the test."""
    int8_kernels.uint8_conv_exact.cache_clear()
    yield
    int8_kernels.uint8_conv_exact.cache_clear()


def test_the_environment_can_name_the_kind_of_cpu_to_calibrate_for(monkeypatch, fresh_probe):
    monkeypatch.setenv(int8_kernels.OVERRIDE, "saturating")
    assert int8_kernels.uint8_conv_exact() is False
    assert int8_kernels.qdq_level() == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    int8_kernels.uint8_conv_exact.cache_clear()
    monkeypatch.setenv(int8_kernels.OVERRIDE, "Exact")
    assert int8_kernels.uint8_conv_exact() is True
    int8_kernels.uint8_conv_exact.cache_clear()
    monkeypatch.setenv(int8_kernels.OVERRIDE, "avx2")
    with pytest.raises(GraphkitError, match="must be exact or saturating, got 'avx2'"):
        int8_kernels.uint8_conv_exact()


@pytest.mark.parametrize("make", [tensorrt_qdq, amct_qdq])
def test_tensorrt_and_amct_store_unsigned_entries_as_symmetric_int8(make):
    model = make_model()
    signed, unsigned = make(_plan(False), model), make(_plan(True), model)
    assert signed.SerializeToString() == unsigned.SerializeToString()
    assert all(zp.dtype == np.int8 for _, zp in _quantizers(unsigned).values())


def test_signed_only_backends_get_the_unsigned_activations_shifted_and_say_so(tmp_path):
    """TensorRT and Ascend store int8 only: a plan's uint8 activations reach them shifted
    by 127 uint8 steps (graphkit.quant.shift), the same step, so their Q/DQ models compute
    what the onnxruntime uint8 one does; the signed plan's files are unchanged."""
    lines: list[str] = []
    plan = _plan(True)
    for unsigned in (False, True):
        export_all(
            _plan(unsigned),
            make_model(),
            ["tensorrt", "atc", "onnx"],
            tmp_path / str(unsigned),
            log=lines.append,
        )
    assert any("2 of the plan's 2 unsigned activations shifted onto int8" in x for x in lines)
    assert "shift by 127 uint8 steps" in (tmp_path / "True" / "README.md").read_text()
    assert "shift" not in (tmp_path / "False" / "README.md").read_text()
    uint8 = make_session(onnx.load(tmp_path / "True" / "onnx" / "model.qdq.onnx"))
    for backend in ("tensorrt", "atc"):
        qdq = {u: onnx.load(tmp_path / str(u) / backend / "model.qdq.onnx") for u in (False, True)}
        quantizers = _quantizers(qdq[True])
        for name in ("r1", "r2"):
            # a padded Conv reads the tensor through a Pad of its own (filled with x = 0)
            (scale, zp), *_ = [v for k, v in quantizers.items() if k.startswith(f"{name}_shifted")]
            assert zp.dtype == np.int8
            assert scale == pytest.approx(plan.activations[name].amax / 255)
        shifted, signed = make_session(qdq[True]), make_session(qdq[False])
        error = {"shifted": 0.0, "signed": 0.0}
        signal = 0.0
        for f in feeds(4, seed=9):
            want = uint8.run(None, f)[0].astype(np.float64)
            signal += float((want**2).sum())
            error["shifted"] += float(((shifted.run(None, f)[0] - want) ** 2).sum())
            error["signed"] += float(((signed.run(None, f)[0] - want) ** 2).sum())
        # rounding ties and the top uint8 level apart, the same model
        shifted_db, signed_db = sqnr_db(signal, error["shifted"]), sqnr_db(signal, error["signed"])
        assert shifted_db > max(50.0, signed_db + 10), backend


def test_the_unsigned_flag_survives_save_and_load_and_version_2_plans_load(tmp_path):
    plan = _plan(True)
    plan.save(tmp_path / "p.json")
    back = QuantPlan.load(tmp_path / "p.json")
    assert sorted(n for n, e in back.activations.items() if e.unsigned) == ["r1", "r2"]
    d = json.loads((tmp_path / "p.json").read_text())
    for entry in d["activations"].values():
        entry.pop("unsigned")
    d["schema_version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(d))
    assert not any(e.unsigned for e in QuantPlan.load(tmp_path / "v2.json").activations.values())
    d = json.loads((tmp_path / "p.json").read_text())
    d["activations"][INPUT]["unsigned"] = True  # x is seen negative
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(GraphkitError, match="activations.x is marked unsigned but its observed"):
        QuantPlan.load(tmp_path / "bad.json")


def _kernels_exact(monkeypatch, exact: bool) -> None:
    """Make this CPU look like one whose onnxruntime runs uint8 exactly, or saturates."""
    monkeypatch.setattr(int8_kernels, "uint8_conv_exact", lambda: exact)
    monkeypatch.setattr(quantize_module, "uint8_conv_exact", lambda: exact)


def test_the_recipe_stores_never_negative_activations_uint8_and_records_it(tmp_path, monkeypatch):
    """Where onnxruntime runs uint8 exactly, each method is measured once, its
    never-negative activations uint8 (the finer grid on the same range), and the plan
    keeps them so; `--unsigned off` keeps every activation signed."""
    _kernels_exact(monkeypatch, True)
    model_path, spec = write_files(tmp_path, n=8)
    small = {"fit_samples": 4, "score_samples": 4, "max_float": 0.0, "round_weights": False}
    plan = quantize(model_path, spec, recipe_of("default", **small))
    r = plan.recipe["unsigned"]
    assert r["tensors"] == 2 and r["of"] == len(plan.activations)
    assert r["kept"] is True and "skipped" not in r
    assert r["exact_here"] is True  # which CPU the scores were measured on
    assert sorted(n for n, e in plan.activations.items() if e.unsigned) == ["r1", "r2"]
    assert set(plan.recipe["methods"]) == {"mse", "percentile", "minmax"}
    off = quantize(model_path, spec, recipe_of("default", unsigned="off", **small))
    assert "unsigned" not in off.recipe and not any(e.unsigned for e in off.activations.values())
    with pytest.raises(GraphkitError, match="unsigned must be auto, on or off"):
        recipe_of("default", unsigned="sometimes")


def test_on_a_cpu_that_saturates_uint8_auto_keeps_activations_signed(tmp_path, monkeypatch, capsys):
    """There a uint8 plan would run worse in onnxruntime than measured: auto does not
    offer it, says why, and `--unsigned on` still gives it (for VNNI / ARM targets)."""
    _kernels_exact(monkeypatch, False)
    model_path, spec = write_files(tmp_path, n=8)
    small = {"fit_samples": 4, "score_samples": 4, "max_float": 0.0, "round_weights": False}
    said: list[str] = []
    plan = quantize(model_path, spec, recipe_of("default", **small), log=said.append)
    r = plan.recipe["unsigned"]
    assert r["kept"] is False and r["exact_here"] is False and "saturates" in r["skipped"]
    assert not plan.unsigned_activations()
    assert any("2 never-negative activations kept signed" in m for m in said)
    said.clear()
    calibrate_module = importlib.import_module("graphkit.commands.calibrate")
    monkeypatch.setattr(calibrate_module, "uint8_conv_exact", lambda: False)
    argv = ["calibrate", str(model_path), "--data", str(spec), "--fit-samples", "4"]
    argv += ["--score-samples", "4", "--max-float", "0", "--no-round-weights"]
    assert main([*argv, "-o", str(tmp_path / "p.json")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "2 never-negative activations kept signed: onnxruntime on this CPU" in printed
    assert "--unsigned on" in printed
    plain = quantize(model_path, spec, recipe_of("plain", unsigned="on"), log=said.append)
    assert any("saturates" in m for m in said)
    assert sorted(n for n, e in plain.activations.items() if e.unsigned) == ["r1", "r2"]
    # for int8-only targets the uint8 grid ships shifted, not through onnxruntime's kernels:
    # measured unfused (exact on this CPU too) and kept
    ncnn = quantize(model_path, spec, recipe_of("default", targets=("ncnn",), **small))
    r = ncnn.recipe["unsigned"]
    assert "skipped" not in r and r["kept"] is True
    assert sorted(n for n, e in ncnn.activations.items() if e.unsigned) == ["r1", "r2"]


def test_a_target_without_unsigned_int8_measures_the_activations_it_gets_shifted(tmp_path, capsys):
    model_path, spec = write_files(tmp_path, n=8)
    argv = ["calibrate", str(model_path), "--data", str(spec), "--fit-samples", "4"]
    argv += ["--score-samples", "4", "--max-float", "0", "--no-round-weights"]
    assert main([*argv, "-o", str(tmp_path / "ort.json")]) == 0
    ort_plan = QuantPlan.load(tmp_path / "ort.json")
    unsigned = sum(e.unsigned for e in ort_plan.activations.values())
    printed = capsys.readouterr().out
    said = f"{unsigned} never-negative activations uint8" in printed
    assert "unsigned" in ort_plan.recipe and said == bool(unsigned)
    assert ("--unsigned off" in printed) == bool(unsigned)  # how to deploy on AVX2-only CPUs
    onnx_target = ["--target", "onnx", "--out-dir", str(tmp_path / "o")]
    assert main([*argv, "-o", str(tmp_path / "onnx.json"), *onnx_target]) == 0
    assert "unsigned" in QuantPlan.load(tmp_path / "onnx.json").recipe  # onnx stores uint8
    assert "--unsigned off" in capsys.readouterr().out
    out = [
        "-o",
        str(tmp_path / "trt.json"),
        "--target",
        "tensorrt",
        "--out-dir",
        str(tmp_path / "d"),
    ]
    assert main([*argv, *out]) == 0
    printed = capsys.readouterr().out
    # both Relu outputs are made by a Conv and read by one: measured uint8, shipped shifted
    assert "2 of 2 never-negative int8 inputs can be shifted onto int8 for tensorrt" in printed
    trt = QuantPlan.load(tmp_path / "trt.json")
    assert trt.recipe["unsigned"]["tensors"] == 2 and "--unsigned off" not in printed
    assert main([*argv, "--unsigned", "off", *out[:2], "--target", "tensorrt"] + out[4:]) == 0
    trt = QuantPlan.load(tmp_path / "trt.json")
    assert "unsigned" not in trt.recipe and not any(e.unsigned for e in trt.activations.values())


def _sign_model() -> onnx.ModelProto:
    from onnx import helper
    from tiny import model_of

    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w", "b"], ["conv"]),
        n("Relu", ["conv"], ["relu"]),
        n("Clip", ["conv", "zero", "six"], ["relu6"]),
        n("Clip", ["conv", "minus", "six"], ["clip_signed"]),
        n("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Add", ["relu", "relu6"], ["sum"]),
        n("Concat", ["relu", "conv"], ["mixed"], axis=1),
        n("Pad", ["relu", "pads", "minus"], ["padded"]),
        n("Sigmoid", ["conv"], ["sig"]),
        n("Conv", ["conv", "w2"], ["conv2"]),  # makes `conv` a quantized layer's input
    ]
    out = [("pool", [1, 2, 2, 2]), ("sum", [1, 2, 4, 4]), ("mixed", [1, 4, 4, 4])]
    out += [("padded", [1, 2, 6, 6]), ("sig", [1, 2, 4, 4]), ("clip_signed", [1, 2, 4, 4])]
    out += [("conv2", [1, 2, 4, 4])]
    inits = {
        "w": np.ones((2, 1, 1, 1), np.float32),
        "w2": np.ones((2, 2, 1, 1), np.float32),
        "b": np.full(2, 5.0, np.float32),  # conv is positive on data in [0, 1], not always
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
        "minus": np.array(-1.0, np.float32),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
    }
    return model_of(nodes, [("x", [1, 1, 4, 4])], out, inits)


def test_the_graph_says_which_tensors_can_never_be_negative():
    from graphkit.quant.signs import never_negative

    sure = never_negative(_sign_model())
    assert {"relu", "relu6", "pool", "sum", "sig"} <= sure
    assert not {"x", "conv", "clip_signed", "mixed", "padded"} & sure


def test_a_tensor_positive_only_on_the_data_stays_signed():
    """conv = x + 5 is never negative on inputs in [0, 1] but can be: not uint8."""
    model = _sign_model()
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(0, 1, (1, 1, 4, 4)).astype(np.float32)} for _ in range(3)]
    plan = table_for(model, samples, "minmax")
    assert plan.activations["conv"].min > 0
    assert "conv" in nonnegative(plan) and "conv" not in nonnegative(plan, model)
