"""export_all / `graphkit export`: every target, the README, refusal of foreign tables."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
from test_export_fixtures import calibrated_table, feeds, tiny_cnn

from graphkit.backends import TARGETS, export_all, load_table, parse_targets
from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.quant.table import ActivationEntry, WeightEntry

ALL_BUT_NCNN = [t for t in TARGETS if t != "ncnn"]


@pytest.fixture(scope="module")
def tiny():
    model = tiny_cnn()
    data = feeds(8)
    return model, calibrated_table(model, data), data


def test_targets_are_parsed_and_unknown_ones_refused():
    assert parse_targets("ncnn, tensorrt,ncnn") == ["ncnn", "tensorrt"]
    assert parse_targets("all") == list(TARGETS)
    with pytest.raises(GraphkitError, match="unknown export target 'tflite'"):
        parse_targets("ncnn,tflite")


def test_export_all_writes_every_target_and_a_readme(tiny, tmp_path, pnnx_installed):
    model, table, data = tiny
    lines: list[str] = []
    files = export_all(
        table,
        model,
        "all",
        tmp_path,
        samples=lambda: iter(data),
        keep_float=["conv3x3"],
        log=lines.append,
    )
    for f in files:
        assert f.path.exists(), f.path
    # every target and every slow ncnn step says so before it starts
    for step in ("ncnn: converting with pnnx", "ncnn: checking int8", "vacc: writing"):
        assert any(line.startswith(step) for line in lines), (step, lines)
    readme = (tmp_path / "README.md").read_text()
    for f in files:
        assert str(f.path.relative_to(tmp_path)) in readme
    for cmd in (
        "trtexec",
        "atc --framework=5",
        "vamc build",
        "use_int8_inference",
        "convert_qat_model",
    ):
        assert cmd in readme
    for d in ("ncnn", "tensorrt", "atc", "vacc", "onnx"):
        assert (tmp_path / d).is_dir()
    check = json.loads((tmp_path / "ncnn" / "int8_check.json").read_text())
    assert check["samples"] == 8 and check["outputs"]["out0"]["onnx"] == "y"
    assert check["outputs"]["out0"]["cosine"] > 0.99
    assert set(check["layer_sqnr_db"]) == {
        (tmp_path / "ncnn" / "model.table").read_text().split()[i] for i in (-2, -4, -6, -8)
    }


def _foreign(table, kind):
    t = dataclasses.replace(table, activations=dict(table.activations), weights=dict(table.weights))
    if kind == "missing tensor":
        t.activations["not_in_model"] = ActivationEntry(1.0)
    else:
        t.weights["w1"] = WeightEntry([1.0] * 5, 0, "conv1", "Conv")  # w1 has 8 channels
    return t


@pytest.mark.parametrize(
    "kind,msg", [("missing tensor", "not_in_model"), ("channels", "5 channel scales")]
)
@pytest.mark.parametrize("target", list(TARGETS))
def test_every_exporter_refuses_a_table_of_another_model(tiny, tmp_path, target, kind, msg):
    import importlib

    model, table, _ = tiny
    bad = _foreign(table, kind)
    with pytest.raises(GraphkitError, match=msg):
        importlib.import_module(TARGETS[target]).export(bad, model, tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written


def test_cli_exports_from_a_json_table_and_from_a_tensorrt_cache(tiny, tmp_path, capsys):
    model, table, _ = tiny
    onnx.save(model, tmp_path / "m.onnx")
    table.save(tmp_path / "t.json")
    rc = main(
        [
            "export",
            str(tmp_path / "t.json"),
            str(tmp_path / "m.onnx"),
            "--target",
            "tensorrt,atc",
            "--out-dir",
            str(tmp_path / "a"),
        ]
    )
    assert rc == 0
    cache = tmp_path / "a" / "tensorrt" / "CalibrationTable"
    back = load_table(cache, model)
    assert set(back.activations) == set(table.activations)
    assert set(back.weights) == set(table.weights)  # weights come from the model
    rc = main(
        [
            "export",
            str(cache),
            str(tmp_path / "m.onnx"),
            "--target",
            "atc,onnx",
            "--out-dir",
            str(tmp_path / "b"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "a" / "atc" / "record.txt").read_text().count("record {") == (
        tmp_path / "b" / "atc" / "record.txt"
    ).read_text().count("record {")


def test_cli_reports_a_bad_table_in_one_sentence(tiny, tmp_path, capsys):
    model, _, _ = tiny
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "t.json").write_text("{}")
    rc = main(
        [
            "export",
            str(tmp_path / "t.json"),
            str(tmp_path / "m.onnx"),
            "--target",
            "onnx",
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "not a graphkit calibration table" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_failing_target_leaves_no_half_exported_directory(tmp_path):
    from test_export_fixtures import golden_table, two_conv

    out = tmp_path / "out"
    with pytest.raises(GraphkitError, match="gears"):
        export_all(golden_table(), two_conv(dynamic=True), "onnx,atc", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_exporting_again_keeps_the_users_own_files(tmp_path, tiny):
    model, table, _ = tiny
    out = tmp_path / "deploy"
    export_all(table, model, ["onnx"], out)
    mine = out / "onnx" / "my_notes.txt"
    mine.write_text("keep me")
    export_all(table, model, ["onnx", "tensorrt"], out)
    assert mine.read_text() == "keep me"
    assert (out / "onnx" / "model.qdq.onnx").is_file()
    assert (out / "tensorrt" / "model.onnx").is_file()


def test_a_readme_graphkit_did_not_write_is_never_overwritten(tmp_path, tiny):
    model, table, _ = tiny
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    with pytest.raises(GraphkitError, match="not written by graphkit"):
        export_all(table, model, ["onnx"], out)
    assert (out / "README.md").read_text() == "# my project\n"
    assert not (out / "onnx").exists()


def test_readme_paths_are_relative_to_the_export_folder(tmp_path, tiny, monkeypatch):
    model, table, _ = tiny
    monkeypatch.chdir(tmp_path)
    export_all(table, model, ["onnx"], "deploy")
    readme = (tmp_path / "deploy" / "README.md").read_text()
    assert "| `onnx/model.qdq.onnx` |" in readme and "deploy/onnx" not in readme


def test_a_misspelled_export_option_is_refused_not_ignored(tmp_path):
    from graphkit.backends import export_all
    from graphkit.errors import GraphkitError

    with pytest.raises(GraphkitError, match="no exporter takes the option 'gear_cont'"):
        export_all(None, None, ["onnx"], tmp_path / "out", gear_cont=3)
    assert not (tmp_path / "out").exists()


def test_every_backend_package_is_a_backend():
    import inspect

    from graphkit.backends import TARGETS, backend

    for name in TARGETS:
        b = backend(name)
        assert b.NAME == name
        params = inspect.signature(b.export).parameters
        assert list(params)[:3] == ["table", "model", "out_dir"]
        assert params["keep_float"].kind is inspect.Parameter.KEYWORD_ONLY
