"""Calibrating a model that is already ncnn (.param/.bin), as ncnn2table + ncnn2int8 do."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from test_export_fixtures import calibrated_table, feeds, tiny_cnn

from graphkit.backends.ncnn import exporter as ex
from graphkit.backends.ncnn import runtime as nc
from graphkit.backends.ncnn.convert import convert
from graphkit.cli import main


@pytest.fixture(scope="module")
def ncnn_files(tmp_path_factory, pnnx_installed):
    """An fp32 ncnn model (as a user has it from pnnx / onnx2ncnn), its data and spec."""
    root = tmp_path_factory.mktemp("native")
    model = tiny_cnn()
    nm = convert(model, root / "conv")
    shutil.copy(nm.param, root / "net.param")
    shutil.copy(nm.bin, root / "net.bin")
    data = feeds(12)
    np.savez(root / "data.npz", x=np.concatenate([d["x"] for d in data]))
    spec = {
        "input": {"name": "x", "layout": "NCHW", "size": [16, 16]},
        "source": {"type": "npz", "path": str(root / "data.npz")},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return model, root, data


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_ncnn_model_gets_the_thresholds_the_onnx_path_gives_its_twin(ncnn_files, capsys):
    model, root, data = ncnn_files
    out = root / "int8"
    assert run("calibrate", root / "net.param", "--data", root / "spec.yaml", "--out-dir", out) == 0
    table = ex.parse_table((out / "model.table").read_text())
    param = nc.read_param(root / "net.param")
    blobs = nc.read_bin(param, (root / "net.bin").read_bytes())
    twins = ex.match_layers(model, param, blobs)
    onnx_plan = calibrated_table(model, data, "kl-ncnn")
    assert set(table.activations) == set(twins)  # every Convolution / InnerProduct
    for layer, node in twins.items():
        want = 127.0 / onnx_plan.activations[node.input[0]].amax
        assert table.activations[layer] == pytest.approx(want, rel=1e-3), layer
        w = blobs[layer][0].data.astype(np.float32)
        assert table.weights[layer] == pytest.approx(ex.weight_scales(param.layer(layer), w))
    # the int8 model loads in ncnn, runs int8 and follows fp32
    fp = nc.NcnnNet(root / "net.param", root / "net.bin")
    q = nc.NcnnNet(out / "model.int8.param", out / "model.int8.bin", int8=True)
    r = ex.compare(fp, q, iter(data[:4]), fp.outputs, input_map={"x": fp.inputs[0]})
    assert min(r["cosine"].values()) > 0.99
    int8_layers = [lay for lay in nc.read_param(out / "model.int8.param").layers if lay.get(8)]
    assert len(int8_layers) == len(twins)
    assert "ncnn2int8" in (out / "README.md").read_text()
    assert "ncnn layers int8" in capsys.readouterr().out


def test_keep_float_and_method_reach_the_table(ncnn_files, tmp_path):
    _, root, _ = ncnn_files
    param = nc.read_param(root / "net.param")
    first = next(lay.name for lay in param.layers if lay.type in ex.QUANT_TYPES)
    out = tmp_path / "o"
    code = run(
        "calibrate", root / "net.param", "--data", root / "spec.yaml", "--out-dir", out,
        "--method", "minmax", "--keep-float", first,
    )  # fmt: skip
    assert code == 0
    table = ex.parse_table((out / "model.table").read_text())
    assert first not in table.activations and first not in table.weights
    assert "minmax" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    "change, extra, message",
    [
        (None, ["-o", "t.json"], "-o applies to ONNX models"),
        (None, ["--qdq", "q.onnx"], "--qdq applies to ONNX models"),
        (None, ["--workers", "2"], "--workers applies to ONNX models"),
        (None, ["--max-float", "20%"], "--max-float applies to ONNX models"),
        (None, ["--keep-float", "nope"], "'nope' is not a layer"),
        ("layout", [], "reads 3 channels first: fix input.layout"),
        ("no-bin", [], "do not exist"),
    ],
)
def test_bad_ncnn_calibrations_are_one_sentence_and_write_nothing(
    ncnn_files, tmp_path, capsys, change, extra, message
):
    _, root, _ = ncnn_files
    work = tmp_path / "w"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("conv", "int8"))
    spec = yaml.safe_load((work / "spec.yaml").read_text())
    spec["source"]["path"] = str(work / "data.npz")
    if change == "layout":  # channels-last data for a channels-first ncnn model
        spec["input"]["layout"] = "NHWC"
        x = np.load(work / "data.npz")["x"]
        np.savez(work / "data.npz", x=x.transpose(0, 2, 3, 1))
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    if change == "no-bin":
        (work / "net.bin").unlink()
    before = sorted(p.name for p in work.iterdir())
    argv = ["calibrate", work / "net.param", "--data", work / "spec.yaml"]
    argv += ["--out-dir", work / "out", *extra]
    code = run(*argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert sorted(p.name for p in work.iterdir()) == before
