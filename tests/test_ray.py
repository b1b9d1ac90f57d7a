"""--executor ray: the same tables, plans and APs as one process, from Ray tasks."""

from __future__ import annotations

import json
import sys

import pytest
from quant_synthetic import write_data
from test_eval_pipeline import dataset  # noqa: F401 - the fixture, shared

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.evaluators.evaluate import evaluate
from graphkit.quant.calibrate import calibrate

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'graphkit[ray]')")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module, with the two workers the 2-core machine has."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _table(plan) -> str:
    d = plan.to_dict()
    if d.get("recipe"):
        d["recipe"].pop("seconds", None)
    return json.dumps(d, sort_keys=True)


def test_ray_calibration_table_is_byte_equal_to_one_process(tmp_path):
    model, spec = write_data(tmp_path, n=9)
    one = calibrate(str(model), str(spec), method="kl-ncnn")
    for shards in (1, 2, 3):  # shards of 3, 3 and 3 samples, or uneven
        got = calibrate(str(model), str(spec), method="kl-ncnn", executor="ray", workers=shards)
        assert _table(got) == _table(one)
        assert got.num_samples == 9


def test_calibrate_cli_on_ray_writes_the_same_plan(tmp_path, capsys):
    model, spec = write_data(tmp_path, n=6)
    args = ["calibrate", str(model), "--data", str(spec), "--recipe", "plain"]
    assert main([*args, "-o", str(tmp_path / "a.json")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.json"), "--executor", "ray"]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    for d in (a, b):
        d["recipe"].pop("seconds")
    assert a == b


def test_ray_evaluation_gives_the_single_process_predictions_and_ap(dataset):  # noqa: F811
    one = evaluate(dataset / "model.onnx", dataset / "cfg.yaml")
    got = evaluate(dataset / "model.onnx", dataset / "cfg.yaml", executor="ray", workers=3)
    assert got["predictions"] == one["predictions"]
    assert got["stats"] == one["stats"]
    assert got["executor"] == "ray" and got["workers"] == 3


def test_an_error_inside_a_ray_task_is_one_sentence(tmp_path):
    model, spec = write_data(tmp_path, n=4)
    (tmp_path / "data.npz").unlink()  # the tasks find no data: the same sentence as locally
    with pytest.raises(GraphkitError) as local:
        calibrate(str(model), str(spec))
    with pytest.raises(GraphkitError) as remote:
        calibrate(str(model), str(spec), executor="ray", workers=2)
    assert str(remote.value) == str(local.value)


@pytest.mark.slow
def test_real_model_plan_with_ray_sensitivity_equals_one_process(assets):
    from graphkit.quant.quantize import quantize, recipe_of

    spec = "examples/models/posenet.yaml"
    model = str(assets / "models" / "posenet.onnx")
    recipe = recipe_of("default", fit_samples=4, score_samples=4)
    one = quantize(model, spec, recipe, limit=24)
    got = quantize(model, spec, recipe, limit=24, executor="ray")
    assert one.recipe.get("float"), "the float-fallback search (sensitivity) did not run"
    assert got.recipe.get("screened") == one.recipe.get("screened") is not None
    assert got.keep_float == one.keep_float
    same = _table(got) == _table(one)  # one line on failure: the JSON diff takes minutes
    assert same, "the plan made with Ray differs from the one-process plan"


def test_without_ray_installed_the_executor_says_how_to_get_it(monkeypatch):
    from graphkit.runtime import ray_tasks

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GraphkitError, match=r"pip install 'graphkit\[ray\]'"):
        ray_tasks.ray_module()


def test_ray_per_layer_diff_gives_the_single_process_rows(tmp_path):
    import numpy as np
    from test_diff_models import conv_model, ort_qdq

    from graphkit.evaluators.per_layer import per_layer_errors, per_layer_errors_ray
    from graphkit.model import load_model

    rng = np.random.default_rng(1)
    images = [rng.random((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    conv_model(tmp_path / "ref.onnx")
    ort_qdq(tmp_path / "ref.onnx", tmp_path / "q.onnx", images)
    ref, quant = load_model(tmp_path / "ref.onnx"), load_model(tmp_path / "q.onnx")
    feeds = [{"x": im} for im in images]
    seen = []
    one = per_layer_errors(ref, quant, feeds)
    got = per_layer_errors_ray(ref, quant, feeds, on_layer=seen.append)
    assert got == one and sorted(seen) == sorted(r["node"] for r in one)
