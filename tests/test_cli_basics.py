import subprocess
import sys

import pytest
from tiny import model_of

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
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = model_of(nodes, [("x", [1, 64])], [("y", [1, 32])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "m.data").unlink()
    out = tmp_path / "info.json"
    assert main(["inspect", str(path), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["parameters"] == 64 * 32 and info["ops"] == {"MatMul": 1}
    assert "MatMul" in capsys.readouterr().out


def test_top_level_help_imports_no_onnx_and_every_command_help_is_its_library_docstring():
    import importlib

    from graphkit.commands._common import COMMANDS

    code = (
        "import sys\n"
        "from graphkit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in r.stdout
    for name, (_module, doc_module) in COMMANDS.items():
        first = importlib.import_module(doc_module).__doc__.strip().splitlines()[0]
        assert first.split()[0] in r.stdout, name  # the one-liner, wrapped by argparse
    # a command's own --help still has all its options (its module is imported then)
    r = subprocess.run(
        [sys.executable, "-m", "graphkit.cli", "calibrate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--max-float" in r.stdout and "--target-agreement" in r.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["calibrate", "m.onnx", "--data", "s.yaml", "-o", "t.json", "--workers", "0"],
            "at least 1",
        ),
        (["calibrate", "m.onnx", "--data", "s.yaml", "-o", "t.json", "--limit", "0"], "at least 1"),
        (
            [
                "calibrate",
                "m.onnx",
                "--data",
                "s.yaml",
                "-o",
                "t.json",
                "--max-outputs-per-run",
                "0",
            ],
            "at least 1",
        ),
        (
            ["export", "t.json", "m.onnx", "--target", "atc", "--out-dir", "o", "--gears", "-3"],
            "at least 1",
        ),
        (["diff", "a.onnx", "b.onnx", "--data", "s.yaml", "--top", "0"], "at least 1"),
        (["diff", "a.onnx", "b.onnx", "--data", "s.yaml", "--top", "-1"], "at least 1"),
        (
            ["diff", "a.onnx", "b.onnx", "--data", "s.yaml", "--per-layer-samples", "0"],
            "at least 1",
        ),
        (["eval", "m.onnx", "--model-config", "c.yaml", "--workers", "0"], "at least 1"),
        (["eval", "m.onnx", "--model-config", "c.yaml", "--limit", "two"], "whole number"),
        (["apply", "p.yaml", "m.onnx", "-o", "o.onnx", "--seed", "-1"], "at least 0"),
    ],
)
def test_counts_and_seeds_out_of_range_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_external_data_is_written_with_the_models_mode_and_small_models_need_no_data_file(
    tmp_path,
):
    import os

    import numpy as np
    from onnx import helper, numpy_helper

    from graphkit.model import load_model, save_model

    def model(weight_elems: int):
        w = numpy_helper.from_array(np.ones(weight_elems, np.float32), "w")
        nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
        return model_of(nodes, [("x", [weight_elems])], [("y", [weight_elems])], [w])

    big = save_model(model(10_000), tmp_path / "big.onnx", external_data=True)
    data = tmp_path / "big.onnx.data"
    assert data.exists()
    assert os.stat(data).st_mode & 0o777 == os.stat(big).st_mode & 0o777  # not 0600
    assert load_model(big).graph.initializer[0].dims == [10_000]
    # every tensor under onnx's external-data threshold: no .data file, and no error
    small = save_model(model(4), tmp_path / "small.onnx", external_data=True)
    assert small.exists() and not (tmp_path / "small.onnx.data").exists()


def test_progress_piped_prints_a_status_line_with_the_time_left(capsys):
    import time

    from graphkit.commands._common import progress_bar

    with progress_bar(interval=0.05) as bar:  # pytest's capture is not a terminal
        task = bar.add_task("calibrate", total=10)
        for _ in range(4):
            bar.advance(task)
            time.sleep(0.04)
        time.sleep(0.15)
    out = capsys.readouterr().out
    assert "calibrate: 4/10, 0 s, about" in out and "s left" in out


def test_the_library_calls_behind_the_commands_are_importable_from_graphkit(tmp_path):
    import graphkit

    for name in graphkit.__all__:
        assert getattr(graphkit, name) is not None, name
    # a pass pipeline from Python, as README shows it
    from graphkit.demo import build_pose_model

    model = build_pose_model()
    out, steps = graphkit.run_pipeline(model, graphkit.parse_pipeline(["cleanup", "fuse-bn"]))
    assert [s.name for s in steps] == ["cleanup", "fuse-bn"]
    assert len(out.graph.node) <= len(model.graph.node)


def test_leftovers_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    import os

    from graphkit.model import atomic_write_text
    from graphkit.scratch import prefix

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(dead.stdout)  # that process has exited
    (tmp_path / f".graphkit-{gone}-export-abc").mkdir()
    (tmp_path / f".graphkit-{gone}-export-abc" / "model.onnx").write_bytes(b"x" * 100)
    (tmp_path / f".graphkit-{gone}-write-xyz").write_text("half a table")
    live = tmp_path / f".graphkit-{os.getppid()}-save-keep"  # our parent is alive
    live.mkdir()
    mine = tmp_path / (prefix("write-") + "mine")
    mine.write_text("ours")
    user = tmp_path / ".graphkit-notes"  # not a scratch name: never touched
    user.write_text("user file")
    atomic_write_text(tmp_path / "out.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out.json", live.name, mine.name, user.name])


def test_every_command_has_json_output_and_a_help_that_says_so(capsys):
    from graphkit.commands._common import COMMANDS

    for name in COMMANDS:
        argv = [name, "show", "--help"] if name == "table" else [name, "--help"]
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "--json FILE" in out, name


def test_json_dash_puts_only_json_on_stdout(tmp_path, capsys):
    import json

    assert main(["passes", "--short", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    names = [p["name"] for p in json.loads(out)]
    assert "fuse-bn" in names and "fuse-bn" in err  # the listing moved to stderr
    assert main(["demo", "--out-dir", str(tmp_path / "d"), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes_after"] < doc["nodes_before"] and doc["steps"]
    assert main(["passes", "--short"]) == 0  # the next command prints to stdout again
    assert "fuse-bn" in capsys.readouterr().out


def test_errors_say_what_kind_of_mistake_they_are(tmp_path):
    from graphkit.data import load_input_spec
    from graphkit.errors import GraphkitError, InputError, ModelError, VerificationError
    from graphkit.model import load_model
    from graphkit.pipeline import parse_pipeline

    with pytest.raises(InputError, match="unknown key"):
        load_input_spec({"input": {"name": "x", "nmae": 1}, "source": {"type": "npy", "path": "p"}})
    with pytest.raises(InputError, match="did you mean"):
        parse_pipeline(["fuse-bn", {"fold-constants": {"max_size_mbb": 1}}])
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "none.onnx")
    assert issubclass(VerificationError, GraphkitError) and issubclass(ModelError, GraphkitError)


def test_log_level_and_verbose_show_the_library_steps(tmp_path, capsys, caplog):
    import logging

    assert main(["--log-level", "info", "demo", "--out-dir", str(tmp_path / "a")]) == 0
    assert logging.getLogger("graphkit").level == logging.INFO
    steps = [r.getMessage() for r in caplog.records if r.name == "graphkit.pipeline"]
    assert any(m.startswith("fuse-bn: ") and "nodes" in m for m in steps), steps
    assert main(["-vv", "passes", "--short"]) == 0
    assert logging.getLogger("graphkit").level == logging.DEBUG
    assert main(["passes", "--short"]) == 0
    assert logging.getLogger("graphkit").level == logging.WARNING


def test_every_command_help_ends_with_an_example_that_parses(capsys):
    import shlex

    from graphkit.cli import build_parser
    from graphkit.commands._common import COMMANDS, EXAMPLES

    for name in COMMANDS:
        argv = [name, "show", "--help"] if name == "table" else [name, "--help"]
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        if name != "table":
            assert "example: graphkit " in out, name
        for example in EXAMPLES[name].split("; an ncnn model: "):
            words = shlex.split(example)
            assert words[0] == "graphkit"
            args = build_parser(name).parse_args(words[1:])  # SystemExit if it did not parse
            assert args.command == name
