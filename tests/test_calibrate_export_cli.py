"""`graphkit calibrate --target ... --out-dir ...` writes the table and every backend's files."""

from __future__ import annotations

import pytest
from quant_synthetic import write_data

from graphkit.backends.tensorrt.exporter import parse_cache
from graphkit.cli import main
from graphkit.quant.table import CalibrationTable


def test_calibrate_with_targets_writes_backend_files_matching_the_table(tmp_path):
    model, spec = write_data(tmp_path, n=4)
    table_path, out_dir = tmp_path / "t.json", tmp_path / "out"
    # every activation signed: the names and ranges pass through unshifted (the shifted
    # uint8 grid: tests/test_unsigned_activations.py)
    argv = ["calibrate", str(model), "--data", str(spec), "--method", "minmax", "--unsigned", "off"]
    argv += ["-o", str(table_path), "--target", "tensorrt,atc,vacc,onnx", "--out-dir", str(out_dir)]
    assert main(argv) == 0
    table = CalibrationTable.load(table_path)
    for path in ("README.md", "tensorrt/CalibrationTable", "atc/record.txt", "vacc/build.yaml"):
        assert (out_dir / path).exists(), path
    cache = parse_cache((out_dir / "tensorrt/CalibrationTable").read_text())
    for name, entry in table.activations.items():
        assert cache.activations[name].amax == pytest.approx(entry.amax, rel=1e-6)


def test_calibrate_with_out_dir_but_no_target_writes_nothing(tmp_path, capsys):
    model, spec = write_data(tmp_path, n=2)
    table_path = tmp_path / "t.json"
    argv = ["calibrate", str(model), "--data", str(spec), "-o", str(table_path)]
    assert main([*argv, "--out-dir", str(tmp_path / "out")]) == 2
    assert "--target" in capsys.readouterr().err
    assert not table_path.exists() and not (tmp_path / "out").exists()


def test_a_failing_backend_keeps_the_plan_and_says_how_to_export_again(
    tmp_path, capsys, monkeypatch
):
    from graphkit import backends
    from graphkit.errors import BackendError

    def fail(*args, **kwargs):
        raise BackendError("pnnx could not convert the model to ncnn")

    monkeypatch.setattr(backends, "export_all", fail)
    model, spec = write_data(tmp_path, n=2)
    table_path, out_dir = tmp_path / "t.json", tmp_path / "out"
    argv = ["calibrate", str(model), "--data", str(spec), "--method", "minmax"]
    argv += ["-o", str(table_path), "--target", "ncnn", "--out-dir", str(out_dir)]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "pnnx could not convert" in err and f"plan is saved in {table_path}" in err
    assert CalibrationTable.load(table_path).activations  # whole and loadable
    assert not out_dir.exists()
