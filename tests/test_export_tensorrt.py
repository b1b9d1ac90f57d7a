"""TensorRT: calibration cache writer/reader against the format facts, Q/DQ rules."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export_fixtures import calibrated_table, feeds, tiny_cnn

from graphkit.backends.qdq_rules import residual_adds
from graphkit.backends.tensorrt import exporter as trt
from graphkit.errors import GraphkitError
from graphkit.quant.table import ActivationEntry, CalibrationTable
from graphkit.runtime.ort import run

GOLDEN = Path(__file__).parent / "golden"


def _table(method: str) -> CalibrationTable:
    return CalibrationTable(
        method=method,
        activations={
            "input": ActivationEntry(127.0),  # scale 1.0
            "/conv1/Conv_output_0": ActivationEntry(63.5),  # scale 0.5
            "weird name: x": ActivationEntry(127 / 128),  # scale 2**-7, a ': ' in the name
        },
    )


@pytest.mark.parametrize(
    "version,code",
    [
        ("8.6.1", 8601),
        ("8.5.3", 8503),
        ("7.2.1", 7201),
        ("10.13.0", 101300),
        ("10.1.0", 100100),
        ("10.0", 100000),
    ],
)
def test_version_code_uses_each_major_encoding(version, code):
    assert trt.version_code(version) == code
    assert trt.version_string(code) == ".".join((version.split(".") + ["0"])[:3])


@pytest.mark.parametrize(
    "bad", ["ten", "8.6.1.2", "8.10.0", "10.100.0", "", "99.0.0", "6.0.1", "11.0"]
)
def test_bad_versions_are_refused(bad):
    with pytest.raises(GraphkitError):
        trt.version_code(bad)


def test_cache_matches_golden_files():
    assert (
        trt.cache_text(_table("minmax"), "8.6.1")
        == (GOLDEN / "trt_cache_8601_minmax.txt").read_text()
    )
    assert (
        trt.cache_text(_table("entropy-trt"), "10.13.0")
        == (GOLDEN / "trt_cache_101300_entropy2.txt").read_text()
    )


def test_reader_splits_at_last_colon_and_reads_big_endian_scales():
    t = trt.read_cache(GOLDEN / "trt_cache_8601_minmax.txt")
    assert t.settings["trt_version"] == "8.6.1" and t.settings["algorithm"] == "MinMaxCalibration"
    assert {k: v.amax for k, v in t.activations.items()} == {
        "input": 127.0,
        "/conv1/Conv_output_0": 63.5,
        "weird name: x": 127 / 128,
    }


def test_reader_skips_zero_scales_and_refuses_garbage(tmp_path):
    p = tmp_path / "c"
    p.write_text("TRT-8601-EntropyCalibration2\na: 00000000\nb: 3f800000\n")
    t = trt.read_cache(p)
    assert list(t.activations) == ["b"] and t.settings["skipped"] == ["a"]
    p.write_text("not a cache\n")
    with pytest.raises(GraphkitError, match="header"):
        trt.read_cache(p)
    p.write_text("TRT-8601-EntropyCalibration2\nno separator here\n")
    with pytest.raises(GraphkitError, match="line 2"):
        trt.read_cache(p)


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names, st.floats(1e-6, 1e6), min_size=1, max_size=8))
def test_cache_round_trips_any_name_and_scale(acts):
    table = CalibrationTable(
        method="minmax", activations={k: ActivationEntry(v) for k, v in acts.items()}
    )
    back = trt.parse_cache(trt.cache_text(table, "8.6.1"))
    assert list(back.activations) == list(acts)
    for k, v in acts.items():
        # float32 bits of amax / 127: relative error below float32 epsilon
        assert back.activations[k].amax == pytest.approx(v, rel=2e-7)


@pytest.mark.parametrize("bad", ["a\nb", "", "x\r"])
def test_names_with_line_breaks_are_rejected(bad):
    table = CalibrationTable(method="minmax", activations={bad: ActivationEntry(1.0)})
    with pytest.raises(GraphkitError, match="line break"):
        trt.cache_text(table)


def test_scale_hex_is_ieee_big_endian():
    assert trt.scale_hex(1.0) == "3f800000"
    assert struct.unpack(">f", bytes.fromhex(trt.scale_hex(0.1)))[0] == np.float32(0.1)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_cnn()
    return model, calibrated_table(model, feeds(16))


def test_qdq_puts_residual_qdq_on_skip_input_only(tiny):
    model, table = tiny
    q = trt.qdq_model(table, model)
    producer = {o: n for n in q.graph.node for o in n.output}
    add = next(n for n in q.graph.node if n.op_type == "Add")
    conv_in, skip_in = add.input
    assert producer[conv_in].op_type == "Conv"  # the Conv output stays float: Conv+Add fuses
    assert producer[skip_in].op_type == "DequantizeLinear"
    assert residual_adds(model) and residual_adds(model)[0][1] == 1
    zps = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zps)
    assert all(not np.any(onnx.numpy_helper.to_array(z)) for z in zps)


def test_qdq_model_runs_and_tracks_fp32(tiny):
    model, table = tiny
    q = trt.qdq_model(table, model)
    for f in feeds(4, seed=7):
        ref, got = run(model, f)["y"].ravel(), run(q, f)["y"].ravel()
        cos = ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)
        assert cos > 0.99


def test_export_leaves_keep_float_inputs_out_of_the_cache(tiny, tmp_path):
    model, table = tiny
    trt.export(table, model, tmp_path, keep_float=("conv3x3",))
    text = (tmp_path / "tensorrt" / "CalibrationTable").read_text()
    names = [line.rpartition(": ")[0] for line in text.splitlines()[1:]]
    assert "a" not in names  # read only by conv3x3
    assert "r1" in names and "x" in names
    q = onnx.load(tmp_path / "tensorrt" / "model.qdq.onnx")
    conv = next(n for n in q.graph.node if n.name == "conv3x3")
    assert conv.input[0] == "a"


def _gpu_and_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed"
    try:
        import tensorrt  # noqa: F401
        from cuda import cudart  # type: ignore

        err, count = cudart.cudaGetDeviceCount()
        if err != 0 or count == 0:
            return "no CUDA GPU is available"
    except Exception as exc:  # noqa: BLE001
        return f"no usable CUDA GPU ({type(exc).__name__})"
    return None


@pytest.mark.skipif(_gpu_and_tensorrt() is not None, reason=str(_gpu_and_tensorrt()))
def test_tensorrt_builds_int8_engines_from_both_routes(tiny, tmp_path):  # pragma: no cover
    import tensorrt as rt

    model, table = tiny
    trt.export(table, model, tmp_path)
    logger = rt.Logger(rt.Logger.ERROR)
    for route in ("qdq", "cache"):
        builder = rt.Builder(logger)
        net = builder.create_network(0)
        parser = rt.OnnxParser(net, logger)
        src = tmp_path / "tensorrt" / "model.qdq.onnx" if route == "qdq" else None
        data = src.read_bytes() if src else model.SerializeToString()
        assert parser.parse(data)
        cfg = builder.create_builder_config()
        cfg.set_flag(rt.BuilderFlag.INT8)
        if route == "cache":
            cache = (tmp_path / "tensorrt" / "CalibrationTable").read_bytes()

            class Cal(rt.IInt8EntropyCalibrator2):
                def get_batch_size(self):
                    return 1

                def get_batch(self, names):
                    return None

                def read_calibration_cache(self, cache=cache):
                    return cache

                def write_calibration_cache(self, c):
                    pass

            cfg.int8_calibrator = Cal()
        assert builder.build_serialized_network(net, cfg) is not None
