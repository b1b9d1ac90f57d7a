"""The bad-input table: every file a user hands in, broken one way at a time.

Each row edits one file of a good workspace (model, input spec, plan, pass pipeline) and
runs one command. Every row must end the same way: exit code 2, one sentence on stderr
naming the problem, no traceback, no file written or changed. Add a row for every new
way of breaking an input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from quant_planted import feeds, make_model, table_for, write_files

from graphkit.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """model.onnx, spec.yaml, plan.json and passes.yaml that all work."""
    root = tmp_path_factory.mktemp("good")
    model_path, spec_path = write_files(root)
    model_path.rename(root / "model.onnx")
    spec_path.rename(root / "spec.yaml")
    model = make_model()
    plan = table_for(model, feeds(4))
    from graphkit.model import model_hash

    plan.model_hash = model_hash(model)
    plan.save(root / "plan.json")
    (root / "passes.yaml").write_text("passes:\n  - cleanup\n  - fold-constants\n")
    assert (
        main(
            [
                "export",
                str(root / "plan.json"),
                str(root / "model.onnx"),
                "--target",
                "onnx",
                "--out-dir",
                str(root / "probe"),
            ]
        )
        == 0
    )
    shutil.rmtree(root / "probe")
    return root


def edit_yaml(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(ws: Path) -> None:
        data = yaml.safe_load((ws / name).read_text())
        change(data)
        (ws / name).write_text(yaml.safe_dump(data))

    return run


def edit_plan(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(ws: Path) -> None:
        data = json.loads((ws / "plan.json").read_text())
        change(data)
        (ws / "plan.json").write_text(json.dumps(data))

    return run


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / name).write_text(text)


def first_act(d: dict) -> dict:
    return next(iter(d["activations"].values()))


def first_weight(d: dict) -> dict:
    return next(iter(d["weights"].values()))


def heavier_weights(ws: Path) -> None:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(ws / "model.onnx")
    w = m.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 4, w.name))
    onnx.save(m, ws / "model.onnx")


def _external(ws: Path, truncate: bool | None, location: str = "model.onnx.data") -> None:
    """model.onnx with its weights in `location`, then that file cut short or gone (or
    left whole: truncate=None)."""
    import onnx

    model = onnx.load(ws / "model.onnx")
    onnx.save(
        model,
        ws / "model.onnx",
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )
    data = ws / location
    if truncate:
        data.write_bytes(data.read_bytes()[:64])
    elif truncate is not None:
        data.unlink()


def _unknown_op(ws: Path) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(ws / "model.onnx")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "my.ops"
    model.opset_import.append(helper.make_opsetid("my.ops", 1))
    onnx.save(model, ws / "model.onnx")


# nine levels of nine aliases: 9**9 strings once expanded, 90 lines of YAML
ALIAS_BOMB = "\nK:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)
)


def _drop_weight(ws: Path) -> None:
    import onnx

    model = onnx.load(ws / "model.onnx")
    keep = [t for t in model.graph.initializer if t.name != "w3"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save(model, ws / "model.onnx")


CALIBRATE = ["calibrate", "model.onnx", "--data", "spec.yaml", "-o", "new.json"]
EXPORT = ["export", "plan.json", "model.onnx", "--target", "onnx", "--out-dir", "out"]
APPLY = ["apply", "passes.yaml", "model.onnx", "-o", "clean.onnx"]

CASES = {
    # input spec
    "spec std NaN": (
        edit_yaml("spec.yaml", lambda d: d["input"].update(std=float("nan"))),
        CALIBRATE,
        "input.std.0: input should be a finite number",
    ),
    "spec unknown key": (
        edit_yaml("spec.yaml", lambda d: d["source"].update(imgs="x")),
        CALIBRATE,
        "unknown key 'source.imgs'",
    ),
    "spec limit as text": (
        edit_yaml("spec.yaml", lambda d: d["source"].update(limit="5")),
        CALIBRATE,
        "source.limit: input should be a valid integer",
    ),
    "spec seed negative type": (
        edit_yaml("spec.yaml", lambda d: d["source"].update(seed=1.5)),
        CALIBRATE,
        "source.seed: input should be a valid integer",
    ),
    "spec layout typo": (
        edit_yaml("spec.yaml", lambda d: d["input"].update(layout="NCWH")),
        CALIBRATE,
        "input.layout: must be one of NHWC, NCHW",
    ),
    "spec not a mapping": (write("spec.yaml", "- 1\n- 2\n"), CALIBRATE, "must be a mapping"),
    "spec binary": (
        lambda ws: (ws / "spec.yaml").write_bytes(b"\xff\xfe\x00"),
        CALIBRATE,
        "spec.yaml",
    ),
    "spec input name not in model": (
        edit_yaml("spec.yaml", lambda d: d["input"].update(name="image")),
        CALIBRATE,
        "image",
    ),
    "spec seed negative": (
        edit_yaml("spec.yaml", lambda d: d["source"].update(seed=-1)),
        CALIBRATE,
        "source.seed: input should be greater than or equal to 0",
    ),
    "spec pad_value outside pixels": (
        edit_yaml("spec.yaml", lambda d: d["input"].update(pad_value=-1000)),
        CALIBRATE,
        "input.pad_value: input should be greater than or equal to 0",
    ),
    # plan file
    "plan amax tiny": (
        edit_plan(lambda d: first_act(d).update(amax=1e-45)),
        EXPORT,
        "amax: input should be greater than or equal to",
    ),
    "plan amax bool": (
        edit_plan(lambda d: first_act(d).update(amax=True)),
        EXPORT,
        "amax: input should be a valid number",
    ),
    "plan weight amax NaN": (
        edit_plan(lambda d: first_weight(d)["amax"].append(float("nan"))),
        EXPORT,
        "input should be a finite number",
    ),
    "plan axis as text": (
        edit_plan(lambda d: first_weight(d).update(axis="0")),
        EXPORT,
        "axis: input should be a valid integer",
    ),
    "plan unknown key": (edit_plan(lambda d: d.update(colour=1)), EXPORT, "unknown key 'colour'"),
    "plan keep_float text": (
        edit_plan(lambda d: d.update(keep_float="conv1")),
        EXPORT,
        "keep_float: input should be a list",
    ),
    "plan for other weights": (heavier_weights, EXPORT, "made for another model"),
    "plan is a directory": (
        lambda ws: ((ws / "plan.json").unlink(), (ws / "plan.json").mkdir()),
        EXPORT,
        "plan.json",
    ),
    "plan not JSON": (write("plan.json", "{"), EXPORT, "not a JSON calibration table"),
    "TensorRT cache with only its header": (
        write("plan.json", "TRT-8601-EntropyCalibration2\n"),
        EXPORT,
        "has no activation ranges",
    ),
    "plan nested 100000 deep": (
        write("plan.json", "[" * 100000),
        EXPORT,
        "is nested too deeply",
    ),
    "plan number of 5000 digits": (
        write("plan.json", '{"num_samples": ' + "9" * 5000 + "}"),
        EXPORT,
        "not a JSON calibration table",
    ),
    # pass pipeline
    "pipeline fixed_point text": (
        write("passes.yaml", "passes: [cleanup]\nfixed_point: 'yes'\n"),
        APPLY,
        "fixed_point: input should be a valid boolean",
    ),
    "pipeline max_iterations 0": (
        write("passes.yaml", "passes: [cleanup]\nmax_iterations: 0\n"),
        APPLY,
        "max_iterations: input should be greater than 0",
    ),
    "pipeline unknown key": (
        write("passes.yaml", "passes: [cleanup]\nrepeat: 2\n"),
        APPLY,
        "unknown key 'repeat'",
    ),
    "pipeline option NaN": (
        write("passes.yaml", "- fold-constants: {max_size_mb: .nan}\n"),
        APPLY,
        "must be a finite number of at least 0",
    ),
    "pipeline option type": (
        write("passes.yaml", "- fold-constants: {max_size_mb: big}\n"),
        APPLY,
        "must be float",
    ),
    "pipeline unknown pass": (
        write("passes.yaml", "- fold-constant\n"),
        APPLY,
        "did you mean 'fold-constants'",
    ),
    "pipeline is a directory": (
        lambda ws: ((ws / "passes.yaml").unlink(), (ws / "passes.yaml").mkdir()),
        APPLY,
        "pipeline file passes.yaml is not a regular file",
    ),
    "usage error": (lambda ws: None, [*APPLY, "--seed", "-1"], "see 'graphkit apply --help'"),
    # external weights
    "external data truncated": (
        lambda ws: _external(ws, truncate=True),
        APPLY,
        "is truncated: tensor 'w1' needs bytes",
    ),
    "external data missing": (
        lambda ws: _external(ws, truncate=False),
        APPLY,
        "refers to external data that is missing",
    ),
    "model with an op onnxruntime lacks": (
        lambda ws: _unknown_op(ws),
        APPLY,
        "the passes cannot be verified on it (--no-verify applies them unchecked)",
    ),
    "export spec for another input": (
        edit_yaml("spec.yaml", lambda d: d["input"].update(name="image")),
        [*EXPORT, "--data", "spec.yaml"],
        "input.name 'image' is not an input of the model",
    ),
    "apply onto its model's weights file": (
        lambda ws: _external(ws, truncate=None, location="clean.onnx.data"),
        APPLY,
        "the file the input model's weights are read from",
    ),
    "model is a FIFO": (
        lambda ws: ((ws / "model.onnx").unlink(), os.mkfifo(ws / "model.onnx")),
        APPLY,
        "model.onnx is not a regular file",
    ),
    "model missing a weight": (_drop_weight, CALIBRATE, "which no node, weight or graph input"),
    "pipeline nested 20000 deep": (
        write("passes.yaml", "[" * 20000),
        APPLY,
        "is nested too deeply",
    ),
    "spec alias bomb": (
        lambda ws: (ws / "spec.yaml").write_text(
            (ws / "spec.yaml").read_text() + ALIAS_BOMB.replace("K", "decode")
        ),
        CALIBRATE,
        "expands to more than 1,000,000 values",
    ),
    "--json onto the spec": (lambda ws: None, [*CALIBRATE, "--json", "spec.yaml"], "is an input"),
    "-o and --qdq one file": (
        lambda ws: None,
        ["calibrate", "model.onnx", "--data", "spec.yaml", "-o", "x.onnx", "--qdq", "x.onnx"],
        "both write x.onnx",
    ),
    "--json where nothing can be written": (
        lambda ws: None,
        [*APPLY, "--json", "/proc/graphkit.json"],
        "directory /proc is not writable",
    ),
    "export onto a folder where a file goes": (
        lambda ws: (ws / "out" / "onnx" / "model.qdq.onnx").mkdir(parents=True),
        EXPORT,
        "is a directory; graphkit would write a file there",
    ),
    "export under a file where a folder goes": (
        lambda ws: ((ws / "out").mkdir(), (ws / "out" / "onnx").write_text("mine")),
        EXPORT,
        "is a file; graphkit would make a folder there",
    ),
    "no command": (lambda ws: None, [], "no command given"),
    # outputs that would destroy inputs
    "calibrate onto its model": (
        lambda ws: None,
        ["calibrate", "model.onnx", "--data", "spec.yaml", "-o", "model.onnx"],
        "model.onnx",
    ),
    "apply onto its model": (
        lambda ws: None,
        ["apply", "passes.yaml", "model.onnx", "-o", "model.onnx"],
        "model.onnx",
    ),
}


def run_in(ws: Path, argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run the CLI in `ws`: (exit code, stdout, stderr)."""
    monkeypatch.chdir(ws)
    try:
        code = main(argv)
    except SystemExit as exc:  # usage errors leave through argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def digest(ws: Path) -> dict[str, str]:
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(ws.rglob("*"))
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_sentence_exit_2_and_nothing_written(
    case, good, tmp_path, capsys, monkeypatch
):
    breaks, argv, expect = CASES[case]
    ws = tmp_path / "ws"
    shutil.copytree(good, ws)
    breaks(ws)
    before = digest(ws)
    code, out, err = run_in(ws, argv, capsys, monkeypatch)
    assert code == 2, (case, code, err)
    assert expect in " ".join(err.split()), err
    assert "Traceback" not in out + err
    assert err.strip().count("\n") == 0, err
    assert digest(ws) == before  # nothing written, nothing changed
