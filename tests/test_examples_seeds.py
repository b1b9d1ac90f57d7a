"""The seed workflows in examples/seeds run end to end as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(flow: str, assets: Path, work: Path, **env: str) -> subprocess.CompletedProcess:
    """`bash examples/seeds/<flow>/run.sh WORK` as a user runs it (this Python's scripts on
    PATH, the assets exported, `env` as the script's knobs), asserted to succeed."""
    pytest.importorskip("torch", reason="the export step needs PyTorch (the test extra)")
    full = {**os.environ, "GRAPHKIT_ASSETS": str(assets), **env}
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    run = subprocess.run(
        ["bash", str(ROOT / "examples/seeds" / flow / "run.sh"), str(work)],
        capture_output=True,
        text=True,
        env=full,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_hourglass_to_ncnn_int8_flow_runs_and_the_default_plan_beats_ncnn2table(
    assets, tmp_path, pnnx_installed
):
    pytest.importorskip("ncnn")
    run = run_example("hourglass-ncnn", assets, tmp_path / "work", LIMIT="24")
    work = tmp_path / "work"
    for f in (
        "hourglass.onnx",
        "kl/model.int8.param",
        "kl/model.table",
        "default/ncnn/model.int8.bin",
    ):
        assert (work / f).exists(), f
    # the seeds' ncnn2int8: requantize fusion between the stacked convolutions
    kl_param = (work / "kl/model.int8.param").read_text()
    assert " 8=102" in kl_param or " 8=101" in kl_param
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


@pytest.mark.slow
def test_hrnet_ae_to_vacc_and_atc_flow_runs_with_bottom_up_geometry(assets, tmp_path):
    run = run_example("hrnet-ae-vacc-atc", assets, tmp_path / "w", LIMIT="12", SHORT="64")
    w = tmp_path / "w"
    out = " ".join(run.stdout.split())
    # the multi-branch net is verified at a size it runs at, not at 1x1
    assert "free dims set to 64 (input 1x3x64x64)" in out
    # ATC gears follow the short side; every gear has 64 on its short side
    gears = [tuple(map(int, g.split(","))) for g in (w / "atc/atc/gears.txt").read_text().split()]
    assert gears and all(min(g) == 64 and max(g) % 32 == 0 for g in gears)
    assert (w / "atc/atc/record.txt").exists() and (w / "vacc/vacc/build.yaml").exists()
    import yaml

    build = yaml.safe_load((w / "vacc/vacc/build.yaml").read_text())
    assert build["frontend"]["shape"]["input"] == [1, 3, 64, 64]
    assert build["backend"]["quantize"]["skip_conv_layers"]  # the plan's float layers
    int8 = json.loads((w / "int8.json").read_text())
    details = int8["agreement_details"]
    assert details["matching"].startswith("greedy") and details["pairs"] > 0
    assert 0.0 < int8["agreement"] <= 1.0 and int8["workers"] == 2


@pytest.mark.slow
def test_fastpose_to_tensorrt_flow_rebuilds_the_cache_from_itself(assets, tmp_path):
    run = run_example("fastpose-tensorrt", assets, tmp_path / "w", LIMIT="16", SIZE="128 96")
    w = tmp_path / "w"
    assert "the rebuilt cache is byte-identical" in run.stdout
    cache = (w / "entropy/tensorrt/CalibrationTable").read_text().splitlines()
    assert cache[0].startswith("TRT-") and cache[0].endswith("-EntropyCalibration")
    assert len(cache) > 20  # every tensor TensorRT needs, not only the Conv inputs
    for recipe in ("entropy", "default"):
        got = json.loads((w / f"{recipe}.eval.json").read_text())
        assert got["samples"] == 16 and 0.0 < got["agreement"] <= 1.0
