"""`graphkit apply` end to end: reports, verification, rollback, and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphkit import weights
from graphkit.cli import main
from graphkit.demo import build_pose_model
from graphkit.irgraph import set_initializer
from graphkit.model import load_model, save_model
from graphkit.passes.base import REGISTRY, PassResult, register
from graphkit.runtime import ort as ort_rt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "examples" / "passes" / "default.yaml")


@pytest.fixture
def demo_model(tmp_path: Path) -> Path:
    model = build_pose_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return save_model(model, tmp_path / "pose.onnx")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_apply_default_pipeline_prints_per_pass_and_writes_report(tmp_path, demo_model, capsys):
    out, report = tmp_path / "clean.onnx", tmp_path / "r.json"
    code, stdout, err = cli(capsys, "apply", DEFAULT, demo_model, "-o", out, "--report", report)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["nodes_after"] < doc["nodes_before"] == 21
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["fuse-bn"]["ops_removed"] == {"BatchNormalization": 2}
    assert set(steps["fuse-bn"]["max_abs_diff"]) == {"heatmaps"}
    assert all(s["seconds"] >= 0 for s in doc["steps"])
    assert "fuse-bn" in stdout and "verified, max |diff|" in stdout and "fused Pad" in stdout
    assert len(load_model(out).graph.node) == doc["nodes_after"]


def test_no_verify_skips_the_comparison(tmp_path, demo_model, capsys):
    report = tmp_path / "r.json"
    code, _, _ = cli(
        capsys,
        "apply",
        DEFAULT,
        demo_model,
        "-o",
        tmp_path / "o.onnx",
        "--no-verify",
        "--report",
        report,
    )
    assert code == 0
    assert all(s["max_abs_diff"] is None for s in json.loads(report.read_text())["steps"])


def test_fixed_point_pipeline_repeats_until_nothing_changes(tmp_path, demo_model, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        "fixed_point: true\nmax_iterations: 5\npasses: [cleanup, fuse-bn, fuse-conv-affine]\n"
    )
    report = tmp_path / "r.json"
    code, _, err = cli(
        capsys, "apply", pipe, demo_model, "-o", tmp_path / "o.onnx", "--report", report
    )
    assert code == 0, err
    steps = json.loads(report.read_text())["steps"]
    last_round = max(s["iteration"] for s in steps)
    assert last_round >= 2
    assert not any(s["changed"] for s in steps if s["iteration"] == last_round)


@pytest.fixture
def breaking_pass():
    """A pass that silently changes the numbers, to prove verification rolls it back."""

    @register("test-break-output")
    def _break(model: ir.Model) -> PassResult:
        """Scale the first float initializer (test only)."""
        weight = next(iter(model.graph.initializers.values()))
        set_initializer(weight, (weight.const_value.numpy() * 1.5).astype(np.float32))
        return PassResult(model, True, ["scaled a weight"])

    yield "test-break-output"
    REGISTRY.pop("test-break-output", None)


def test_a_pass_that_changes_outputs_is_rolled_back_with_one_sentence(
    tmp_path, demo_model, capsys, breaking_pass
):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"- cleanup\n- {breaking_pass}\n")
    code, out, err = cli(capsys, "apply", pipe, demo_model, "-o", tmp_path / "o.onnx")
    assert code != 0
    assert "pass 'test-break-output' changed output 'heatmaps' by " in err
    assert "rolled back" in err and "Traceback" not in err + out
    assert leftovers(tmp_path, {"pose.onnx", "p.yaml"}) == []


# --- bad input: one sentence, exit != 0, no traceback, no output file ---------------------------


def _bad(tmp_path: Path, capsys, *argv, expect: str) -> None:
    before = set(os.listdir(tmp_path))
    code, out, err = cli(capsys, *argv)
    assert code != 0
    assert expect in " ".join(err.split()), err
    assert "Traceback" not in err + out
    assert err.strip().count("\n") == 0, err  # one line
    assert set(os.listdir(tmp_path)) == before


def test_missing_model(tmp_path, capsys):
    _bad(
        tmp_path,
        capsys,
        "apply",
        DEFAULT,
        tmp_path / "nope.onnx",
        "-o",
        tmp_path / "o.onnx",
        expect="does not exist",
    )


def test_file_that_is_not_onnx(tmp_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 20)
    _bad(tmp_path, capsys, "apply", DEFAULT, bad, "-o", tmp_path / "o.onnx", expect="not")


def test_truncated_onnx(tmp_path, demo_model, capsys):
    data = demo_model.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    _bad(tmp_path, capsys, "apply", DEFAULT, cut, "-o", tmp_path / "o.onnx", expect="truncated")


def test_unknown_pass_suggests_the_closest(tmp_path, demo_model, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- cleanup\n- fuse-bm\n")
    _bad(
        tmp_path,
        capsys,
        "apply",
        pipe,
        demo_model,
        "-o",
        tmp_path / "o.onnx",
        expect="did you mean 'fuse-bn'",
    )


def test_wrong_option_type(tmp_path, demo_model, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- fold-constants: {max_size_mb: big}\n")
    _bad(
        tmp_path,
        capsys,
        "apply",
        pipe,
        demo_model,
        "-o",
        tmp_path / "o.onnx",
        expect="must be float",
    )


def test_malformed_yaml(tmp_path, demo_model, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- cleanup\n- fix-shapes: {input: [1, 3\n")
    _bad(
        tmp_path,
        capsys,
        "apply",
        pipe,
        demo_model,
        "-o",
        tmp_path / "o.onnx",
        expect="not valid YAML",
    )


def test_output_directory_missing_or_not_writable(tmp_path, demo_model, capsys):
    _bad(
        tmp_path,
        capsys,
        "apply",
        DEFAULT,
        demo_model,
        "-o",
        tmp_path / "no" / "o.onnx",
        expect="does not exist",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        target = (
            locked / "o.onnx"
            if not os.access(locked, os.W_OK) or os.geteuid() != 0
            else Path("/proc/o.onnx")
        )
        _bad(tmp_path, capsys, "apply", DEFAULT, demo_model, "-o", target, expect="not writable")
        assert not target.exists()
    finally:
        locked.chmod(0o755)


def test_errors_reach_a_real_process_as_one_line_and_exit_code(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphkit.cli",
            "apply",
            DEFAULT,
            str(tmp_path / "x.onnx"),
            "-o",
            str(tmp_path / "o.onnx"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o.onnx").exists()


def test_demo_command_runs_in_seconds_and_shrinks_the_model(tmp_path, capsys):
    code, out, err = cli(capsys, "demo", "--out-dir", tmp_path / "demo")
    assert code == 0, err
    clean = load_model(tmp_path / "demo" / "demo-pose.clean.onnx")
    ops = [n.op_type for n in clean.graph.node]
    assert "BatchNormalization" not in ops and "Pad" not in ops and "Identity" not in ops
    assert "21 -> 8 nodes" in out


@pytest.fixture
def big_dir(tmp_path: Path):
    """RAM-backed scratch space when there is room (the test writes ~5 GB)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30:
        d = Path(tempfile.mkdtemp(prefix="graphkit-big-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def write_big_model(directory: Path, n: int) -> Path:
    """Three float32 weights of n values (w_i[i] = i + 1, else 0) in big.onnx.data, written
    in chunks so the test process never holds them; each is read whole (ReduceSum)."""
    data = directory / "big.onnx.data"
    inits, nodes = [], []
    with open(data, "wb") as f:
        for i in range(3):
            offset = f.tell()
            chunk = np.zeros(2**24, np.float32)
            for start in range(0, n, chunk.size):
                part = chunk[: min(chunk.size, n - start)].copy()
                if start <= i < start + part.size:
                    part[i - start] = i + 1.0
                f.write(part.tobytes())
            t = helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT, [n]).type.tensor_type
            init = TensorProto(name=f"w{i}", data_type=t.elem_type, dims=[n])
            init.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", offset), ("length", n * 4)):
                init.external_data.add(key=key, value=str(value))
            inits.append(init)
            nodes.append(helper.make_node("Gather", [f"w{i}", "idx"], [f"g{i}"]))
            nodes.append(helper.make_node("ReduceSum", [f"w{i}"], [f"r{i}"], keepdims=0))
    nodes.append(helper.make_node("Sum", ["g0", "g1", "g2", "r0", "r1", "r2"], ["s"]))
    nodes.append(helper.make_node("Identity", ["s"], ["out"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "big.onnx").write_bytes(model.SerializeToString())
    return directory / "big.onnx"


PEAK_RSS = """
import resource, sys
from graphkit.cli import main
code = main(sys.argv[1:])
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_verified_apply_of_a_model_over_2gb_holds_at_most_1_5x_the_model(big_dir):
    tmp_path = big_dir
    n = 190_000_000  # three float32 weights of 760 MB: 2.28 GB in all, over protobuf's 2 GB
    src = write_big_model(tmp_path, n)
    size = (tmp_path / "big.onnx.data").stat().st_size
    assert size > 2**31
    pipe = tmp_path / "p.yaml"
    pipe.write_text("- cleanup\n")
    out = tmp_path / "clean.onnx"
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "apply", str(pipe), str(src), "-o", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stdout
    peak = int(run.stderr.split("peak")[-1])
    assert peak <= 1.5 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    assert (tmp_path / "clean.onnx.data").stat().st_size >= size
    clean = load_model(out, lazy=True)
    assert [n.op_type for n in clean.graph.node] == ["Gather", "ReduceSum"] * 3 + ["Sum"]
    w1 = weights.tensor_array(next(i for i in clean.graph.initializer if i.name == "w1"))
    assert w1.shape == (n,) and w1[1] == 2.0 and float(w1.sum()) == 2.0
    del w1
    result = ort_rt.run(clean, {"idx": np.array([0, 1, 2])})["out"]
    np.testing.assert_array_equal(result, [7.0, 8.0, 9.0])


@pytest.mark.parametrize("value", ["-5", ".nan", ".inf"])
def test_negative_or_non_finite_numeric_option_is_refused(tmp_path, demo_model, capsys, value):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"- fold-constants: {{max_size_mb: {value}}}\n")
    _bad(
        tmp_path,
        capsys,
        "apply",
        pipe,
        demo_model,
        "-o",
        tmp_path / "o.onnx",
        expect="must be a finite number of at least 0",
    )
