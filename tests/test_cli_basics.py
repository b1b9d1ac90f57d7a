import subprocess
import sys

from graphkit.cli import main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for cmd in ("apply", "passes", "inspect"):
        assert cmd in out


def test_console_script_is_installed():
    r = subprocess.run(
        [sys.executable, "-m", "graphkit.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "graphkit" in r.stdout


def test_inspect_reads_shapes_only_and_writes_json(tmp_path, capsys):
    """A model's external weights are not read: inspect works with the data file gone."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "m.data").unlink()
    out = tmp_path / "info.json"
    assert main(["inspect", str(path), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["parameters"] == 64 * 32 and info["ops"] == {"MatMul": 1}
    assert "MatMul" in capsys.readouterr().out
