"""The seed workflows in examples/seeds run end to end as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_hourglass_to_ncnn_int8_flow_runs_and_the_default_plan_beats_ncnn2table(
    assets, tmp_path, pnnx_installed
):
    pytest.importorskip("torch", reason="the export step needs PyTorch (the test extra)")
    pytest.importorskip("ncnn")
    env = {**os.environ, "GRAPHKIT_ASSETS": str(assets), "LIMIT": "24"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(
        ["bash", str(ROOT / "examples/seeds/hourglass-ncnn/run.sh"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    work = tmp_path / "work"
    for f in ("hourglass.onnx", "kl/ncnn/model.int8.param", "default/ncnn/model.int8.bin"):
        assert (work / f).exists(), f
    fp32 = json.loads((work / "fp32.json").read_text())
    kl = json.loads((work / "kl.eval.json").read_text())
    default = json.loads((work / "default.eval.json").read_text())
    assert fp32["samples"] == kl["samples"] == default["samples"] == 24
    assert kl["backend"] == default["backend"] == "ncnn"
    # the flip test and the auxiliary stage are gone from the deployed graph
    assert "strip-flip-test" in run.stdout and "dropped output(s) output_0" in run.stdout
    # graphkit's default plan agrees with FP32 better than ncnn2table's recipe, in ncnn
    print(f"agreement: ncnn2table KL {kl['agreement']:.3f}, default {default['agreement']:.3f}")
    assert default["agreement"] > kl["agreement"]
