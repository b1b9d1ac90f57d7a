"""`graphkit.quantize`: the measured default recipe, its budget, and what the plan records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from quant_planted import make_model, write_files
from quant_synthetic import write_data
from tiny import model_of

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.quant.equalize import apply_equalization, equalization, find_pairs
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.quantize import quantize, recipe_of
from graphkit.quant.table import QuantPlan
from graphkit.runtime.ort import make_session

ROOT = Path(__file__).resolve().parents[1]


def test_default_recipe_measures_every_choice_and_keeps_within_the_budget(tmp_path):
    model_path, spec = write_files(tmp_path, n=8)
    plan = quantize(model_path, spec, recipe_of("default", fit_samples=4, score_samples=4))
    r = plan.recipe
    assert set(r["methods"]) == {"mse", "percentile", "minmax"}
    best = max(r["methods"], key=lambda m: r["methods"][m]["sqnr_db"])
    assert plan.method == best and all(e.method == best for e in plan.activations.values())
    assert "rounding" in r and "bias_correction" in r
    # 3 weighted layers, 10 %: no layer may go float
    assert plan.keep_float == [] and r["float_layers"] == {"count": 0, "of": 3}
    # no decode section: agreement cannot be measured, so the target is neither met nor missed
    assert r["final"]["agreement"] is None and r["target_reached"] is None
    assert all(w.integers() is not None for w in plan.weights.values())


def test_methods_with_the_same_thresholds_are_measured_once(tmp_path, monkeypatch):
    """A method whose thresholds equal an earlier method's makes the same Q/DQ model (on
    posenet percentile 99.99 % is every maximum; here an alias of minmax): its score is
    copied, not measured again."""
    from graphkit.quant import quantize as q

    model_path, spec = write_files(tmp_path, n=8)
    measured = []
    real = q.HeldOutScorer.measure

    def counted(self, candidate, *a, **k):
        measured.append(candidate)
        return real(self, candidate, *a, **k)

    monkeypatch.setattr(q.HeldOutScorer, "measure", counted)
    small = {"fit_samples": 4, "score_samples": 4, "round_weights": False, "max_float": 0.0}
    recipe = recipe_of(
        "default", methods=("mse", "minmax", "max"), bias_correction="off", unsigned="off", **small
    )
    plan = quantize(model_path, spec, recipe)
    methods = plan.recipe["methods"]
    assert methods["max"] == methods["minmax"] != methods["mse"]
    assert len(measured) == 2  # mse and minmax; max copied


def test_rounding_and_ranking_report_their_progress_layer_by_layer(tmp_path):
    model_path, spec = write_data(tmp_path, n=12)
    small = {"fit_samples": 4, "score_samples": 8, "max_float": 0.17, "target_agreement": None}
    calls = []
    quantize(model_path, spec, recipe_of("default", **small), on_stage=lambda *a: calls.append(a))
    stages = list(dict.fromkeys(what for what, _, _ in calls))
    # every Conv rounded, then every layer screened on 2 crops, then the shortlist on all 8
    assert stages == ["rounding weights", "ranking layers on 2 crops", "ranking layers on 8 crops"]
    for what in stages:
        steps = [(done, total) for w, done, total in calls if w == what]
        total = steps[0][1]
        assert [d for d, _ in steps] == list(range(total + 1))
    assert next(c[2] for c in calls if c[0] == stages[2]) == 2  # the 2 x budget shortlist


def test_a_larger_budget_keeps_the_planted_layer_float_with_its_reason(tmp_path):
    model_path, spec = write_files(tmp_path, n=8)
    recipe = recipe_of("default", max_float=0.34, fit_samples=4, score_samples=4)
    plan = quantize(model_path, spec, recipe)
    assert plan.keep_float == ["conv2"]
    assert "sensitivity" in plan.float_reasons["conv2"] and "w2" not in plan.weights
    assert plan.recipe["final"]["sqnr_db"] > plan.recipe["methods"][plan.method]["sqnr_db"]


def test_the_float_search_chooses_only_layer_types_every_target_can_keep_float(tmp_path):
    """vamc skips Conv and MatMul nodes only: a plan for vacc never keeps a Gemm float.
    Here the planted Conv is the layer to keep float; with Convs not allowed, none is."""
    from graphkit.backends import float_op_types

    assert float_op_types(["ncnn", "tensorrt"]) is None
    assert float_op_types(["vacc", "ncnn"]) == ("Conv", "ConvTranspose", "MatMul")
    model_path, spec = write_files(tmp_path, n=8)
    small = {"max_float": 0.34, "fit_samples": 4, "score_samples": 4}
    plan = quantize(model_path, spec, recipe_of("default", **small, float_op_types=("Conv",)))
    assert plan.keep_float == ["conv2"]
    plan = quantize(model_path, spec, recipe_of("default", **small, float_op_types=("MatMul",)))
    assert plan.keep_float == [] and "float" not in plan.recipe


def test_a_float_layer_must_gain_more_than_the_least_gain_to_take_a_budget_slot(tmp_path):
    """The planted layer float lifts the held-out SQNR by a few dB: with a least gain above
    that it is tried, refused, and the slot stays free."""
    model_path, spec = write_files(tmp_path, n=8)
    small = {"max_float": 0.34, "fit_samples": 4, "score_samples": 4}
    plan = quantize(model_path, spec, recipe_of("default", min_float_gain_db=1000.0, **small))
    assert plan.keep_float == [] and plan.recipe["float"]["tried"] == 3  # every layer tried
    assert plan.recipe["recipe"]["min_float_gain_db"] == 1000.0
    # patience: the search gives up after this many layers in a row fail to earn a slot
    recipe = recipe_of("default", min_float_gain_db=1000.0, patience=1, **small)
    plan = quantize(model_path, spec, recipe)
    assert plan.keep_float == [] and plan.recipe["float"]["tried"] == 1
    assert plan.recipe["float"]["stopped"] == "1 ranked layer(s) in a row gained 1000.0 dB or less"


def test_per_tensor_thresholds_only_change_what_raises_the_held_out_score(tmp_path):
    """The opt-in coordinate search (measured not to help on the pose models, docs)."""
    model_path, spec = write_files(tmp_path, n=8)
    small = {"fit_samples": 4, "score_samples": 4, "max_float": 0.0, "round_weights": False}
    small.update(bias_correction="off", unsigned="off", methods=("mse", "kl-ncnn"))
    plan = quantize(model_path, spec, recipe_of("default", tensor_methods=True, **small))
    r = plan.recipe
    method = r["methods"][plan.method]["mean_sqnr_db"]
    assert r["tensor_methods"]["after"]["mean_sqnr_db"] >= method
    assert r["final"] == r["tensor_methods"]["after"]
    for name, entry in plan.activations.items():
        changed = name in r["tensor_methods"]["changed"]
        assert ("per tensor" in entry.method) == changed
    assert r["tensor_methods"]["changed"]  # kl-ncnn's threshold wins on one tensor here
    assert r["tensor_methods"]["after"]["mean_sqnr_db"] > method


def test_screening_on_few_crops_ranks_the_shortlist_on_all_and_keeps_the_same_layers(
    tmp_path,
):
    model_path, spec = write_data(tmp_path, n=12)
    small = {"fit_samples": 4, "score_samples": 8, "max_float": 0.17, "target_agreement": None}
    screened = quantize(model_path, spec, recipe_of("default", **small))
    full = quantize(model_path, spec, recipe_of("default", screen_samples=0, **small))
    assert screened.recipe["screened"] == {"samples": 2, "shortlist": 2}  # 2 x the budget of 1
    assert "screened" not in full.recipe
    assert screened.keep_float == full.keep_float and len(full.keep_float) == 1
    assert screened.float_reasons == full.float_reasons
    with pytest.raises(GraphkitError, match="screen samples must be 0"):
        recipe_of("default", screen_samples=-1)
    with pytest.raises(GraphkitError, match="shortlist must be at least 1 x the budget"):
        recipe_of("default", shortlist=0)


def test_bias_correction_before_the_float_search_leaves_no_bias_on_a_float_layer(tmp_path):
    """The opt-in bias_first (measured not to help, docs): corrected, searched, corrected."""
    model_path, spec = write_files(tmp_path, n=8)
    small = {"fit_samples": 4, "score_samples": 4, "max_float": 0.34}
    plan = quantize(model_path, spec, recipe_of("default", bias_first=True, **small))
    r = plan.recipe["bias_first"]
    assert r["after"]["mean_sqnr_db"] > r["before"]["mean_sqnr_db"]
    assert plan.keep_float == ["conv2"] and "conv2" not in plan.biases
    assert set(plan.biases) == {"conv1", "conv3"}
    assert plan.recipe["final"]["mean_sqnr_db"] > r["after"]["mean_sqnr_db"]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"max_float": 1.5}, "--max-float must be between"),
        ({"target_agreement": 0.0}, "--target-agreement must be in"),
        ({"lookahead": 0}, "lookahead must be at least 1"),
        ({"min_float_gain_db": -1.0}, "least float gain must be >= 0 dB"),
        ({"patience": 0}, "patience must be at least 1"),
        ({"criterion": "vibes"}, "criterion must be sqnr, mean or agreement"),
        ({"bias_correction": "maybe"}, "bias correction must be auto, on or off"),
    ],
)
def test_impossible_recipes_are_refused_in_one_sentence(kw, message):
    with pytest.raises(GraphkitError, match=message):
        recipe_of("default", **kw)


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(GraphkitError, match="known: default, plain"):
        recipe_of("best")


def test_calibrate_refuses_to_overwrite_its_input_model(tmp_path, capsys):
    model_path, spec = write_files(tmp_path, n=4)
    before = model_path.read_bytes()
    for flag in ("-o", "--qdq"):
        argv = ["calibrate", str(model_path), "--data", str(spec), flag, str(model_path)]
        assert main(argv) == 2
        assert "is the input model" in capsys.readouterr().err
    assert model_path.read_bytes() == before


def test_calibrate_needs_something_to_write(tmp_path, capsys):
    model_path, spec = write_files(tmp_path, n=4)
    assert main(["calibrate", str(model_path), "--data", str(spec)]) == 2
    assert "nothing to write" in capsys.readouterr().err


def test_calibrate_checks_output_directories_before_calibrating(tmp_path, capsys):
    model_path, spec = write_files(tmp_path, n=4)
    out = tmp_path / "t.json"
    argv = ["calibrate", str(model_path), "--data", str(spec), "-o", str(out)]
    assert main([*argv, "--qdq", str(tmp_path / "missing" / "q.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def _relu6_chain() -> onnx.ModelProto:
    """conv -> Clip(0, 6) -> depthwise -> Relu -> conv: two equalizable pairs."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {
        "w1": rng.normal(0, 1, (4, 3, 3, 3)) * np.array([3, 0.05, 1, 0.2]).reshape(4, 1, 1, 1),
        "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 1, (4, 1, 3, 3)),
        "b2": rng.normal(0, 0.5, 4),
        "w3": rng.normal(0, 1, (5, 4, 1, 1)),
        "lo": np.array(0.0),
        "hi": np.array(6.0),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
        n("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=4),
        n("Relu", ["c2"], ["r2"], name="relu"),
        n("Conv", ["r2", "w3"], ["y"], name="pw"),
    ]
    return model_of(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 5, 8, 8])], inits, name="chain")


def test_equalization_keeps_the_function_and_equalizes_the_channels():
    model = _relu6_chain()
    assert [(p.producer, p.act, p.consumers) for p in find_pairs(model)] == [
        ("conv1", "relu6", ["dw"]),
        ("dw", "relu", ["pw"]),
    ]
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    eq = equalization(model, samples)
    out = apply_equalization(model, eq)
    onnx.checker.check_model(out)
    a, b = make_session(model), make_session(out)
    for f in samples:
        assert np.allclose(a.run(None, f)[0], b.run(None, f)[0], rtol=1e-4, atol=1e-4)
    from graphkit.quant.equalize import channel_ranges

    before = channel_ranges(model, samples, ["r1"])["r1"]
    after = channel_ranges(out, samples, ["r1"])["r1"]
    assert after.min() / after.max() > before.min() / before.max()
    # applied again from the record, the same model comes out (what a plan relies on)
    again = apply_equalization(model, eq)
    assert again.SerializeToString() == out.SerializeToString()


def test_equalize_rescales_the_relu_pair_skips_the_relu6_one_and_ships_it(tmp_path):
    """`graphkit calibrate --equalize`: the Conv -> Relu -> Conv pair is equalized (the
    Clip one would need a new node), the plan is for the model as given, and its Q/DQ
    output computes what that model computes, up to int8."""
    import yaml

    from graphkit.model import model_hash

    model = _relu6_chain()
    onnx.save(model, tmp_path / "chain.onnx")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    spec = {
        "input": {"name": "x", "layout": "NCHW", "size": [8, 8], "dtype": "float32"},
        "source": {"type": "npz", "path": str(tmp_path / "data.npz")},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = ["calibrate", str(tmp_path / "chain.onnx"), "--data", str(tmp_path / "spec.yaml")]
    out = ["-o", str(tmp_path / "p.json"), "--qdq", str(tmp_path / "q.onnx")]
    assert main([*argv, "--recipe", "plain", "--equalize", *out]) == 0
    plan = QuantPlan.load(tmp_path / "p.json")
    assert [(e.producer, e.act, e.consumers) for e in plan.equalization] == [("dw", "relu", ["pw"])]
    assert plan.model_hash == model_hash(model) and plan.recipe["equalization"] == {"pairs": 1}
    # the producer's bias reaches the shipped model rescaled with its rows
    from onnx import numpy_helper

    shipped = onnx.load(tmp_path / "q.onnx")
    dw = next(n for n in shipped.graph.node if n.name == "dw")
    bias = next(
        numpy_helper.to_array(i) for i in shipped.graph.initializer if i.name == dw.input[2]
    )
    b2 = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "b2")
    scales = np.asarray(plan.equalization[0].scales)
    assert not np.allclose(scales, 1.0) and np.allclose(bias, b2 / scales, rtol=1e-5)
    fp32, q = make_session(model), make_session(shipped)
    for i in range(3):
        want, got = fp32.run(None, {"x": x[i : i + 1]})[0], q.run(None, {"x": x[i : i + 1]})[0]
        assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_quantize_on_a_planted_model_runs_in_onnxruntime(tmp_path):
    """The plan's deploy model and Q/DQ run, with the plan's model hash checked."""
    model_path, spec = write_files(tmp_path, n=6)
    plan = quantize(model_path, spec, "plain")
    plan.save(tmp_path / "p.json")
    back = QuantPlan.load(tmp_path / "p.json")
    make_session(insert_qdq(back.deploy_model(make_model()), back))


@pytest.mark.slow
def test_default_on_posenet_measures_agreement_and_beats_plain(assets, monkeypatch):
    """Real model, few crops: the held-out agreement is measured from decoded keypoints,
    the default plan agrees with FP32 better than plain calibration, and the model it
    ships scores on the held-out crops exactly what the recipe recorded."""
    monkeypatch.setenv("GRAPHKIT_ASSETS", str(assets))
    from graphkit.data import load_input_spec
    from graphkit.model import load_model
    from graphkit.quant.quantize import HeldOutScorer, held_out
    from graphkit.quant.sensitivity import head_tensors

    model = load_model(assets / "models" / "posenet.onnx")
    spec = load_input_spec(ROOT / "examples" / "models" / "posenet.yaml").with_source(limit=16)
    recipe = recipe_of("default", fit_samples=4, score_samples=6, bias_correction="off")
    plan = quantize(model, spec, recipe)
    agree = plan.recipe["final"]["agreement"]
    assert agree is not None and 0 < agree <= 1
    assert len(plan.keep_float) <= 3  # 10 % of 31 layers
    plain = quantize(model, spec, "plain")
    from graphkit.pose.decoders import build_decoder

    _, score = held_out(spec, recipe)
    decoder = build_decoder(spec.decode)
    scorer = HeldOutScorer(model, score, head_tensors(model, decoder.outputs), decoder)
    plain_sqnr, *_ = scorer.measure(insert_qdq(plain.deploy_model(model), plain))
    shipped = scorer.measure(insert_qdq(plan.deploy_model(model), plan))
    assert shipped.worst > plain_sqnr + 3
    # what ships (the plan's integers) is what the recipe measured, not a neighbour of it
    final = plan.recipe["final"]
    assert shipped.worst == pytest.approx(final["sqnr_db"], abs=1e-3)
    assert shipped.mean == pytest.approx(final["mean_sqnr_db"], abs=1e-3)
    assert shipped.agreement == pytest.approx(final["agreement"], abs=1e-4)
    # with the half-width of its 95 % interval over the 6 crops (1.96 standard errors)
    assert 0 < final["agreement_half95"] < 0.5
    assert shipped.agreement_half95 == pytest.approx(final["agreement_half95"], abs=1e-4)


def test_eval_and_diff_check_their_outputs_before_any_work(tmp_path, capsys):
    model_path, spec = write_files(tmp_path, n=2)
    missing = tmp_path / "nowhere" / "r.json"
    argv = ["diff", str(model_path), str(model_path), "--data", str(spec)]
    assert main([*argv, "--json", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*argv, "--html", str(model_path)]) == 2
    assert "is the input model" in capsys.readouterr().err
    argv = ["eval", str(model_path), "--model-config", str(spec), "--json", str(tmp_path)]
    assert main(argv) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_tensorrt_target_calibrates_every_tensor_and_names_the_algorithm(tmp_path):
    model_path, spec = write_files(tmp_path, n=4)
    out = tmp_path / "deploy"
    argv = ["calibrate", str(model_path), "--data", str(spec), "-o", str(tmp_path / "p.json")]
    argv += ["--recipe", "plain", "--target", "tensorrt", "--out-dir", str(out)]
    assert main([*argv, "--trt-algorithm", "EntropyCalibration"]) == 0
    plan = QuantPlan.load(tmp_path / "p.json")
    only_inputs = quantize(model_path, spec, "plain")  # no TensorRT: layer inputs only
    assert set(only_inputs.activations) < set(plan.activations)
    cache = (out / "tensorrt" / "CalibrationTable").read_text().splitlines()
    assert cache[0].endswith("-EntropyCalibration") and len(cache) - 1 == len(plan.activations)


@pytest.mark.parametrize(
    "stopped, says",
    [
        ("budget spent", "within the float budget (10%); raise --max-float"),
        (
            "5 ranked layer(s) in a row gained 0.1 dB or less",
            "stopped before the budget: 5 ranked layer(s) in a row gained 0.1 dB or less",
        ),
    ],
)
def test_a_missed_target_says_whether_a_larger_budget_could_help(stopped, says):
    """Raising --max-float is advice only when the budget was what stopped the search."""
    import argparse

    from graphkit.commands.calibrate import summary

    plan = QuantPlan(method="mse")
    plan.recipe = {
        "recipe": {"target_agreement": 0.98, "max_float": 0.10},
        "final": {"sqnr_db": 20.0, "agreement": 0.93, "mean_sqnr_db": 20.0},
        "target_reached": False,
        "float": {"budget": 7, "layers": 74, "steps": [], "tried": 9, "stopped": stopped},
    }
    args = argparse.Namespace(output="plan.json", qdq=None, out_dir=None)
    text = summary(plan, args)
    assert "target agreement 0.98 not reached" in text and says in text
    assert ("raise --max-float" in text) == (stopped == "budget spent")


def _deconv_attention_model() -> onnx.ModelProto:
    """x -> conv -> relu -> deconv (ConvTranspose) -> tokens (1, 8, 144) -> tokens x
    tokens^T (a MatMul of two activations) -> proj (MatMul by a constant) -> y."""
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {
        "wc": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "wd": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        "shape": np.array([1, 8, 144], np.int64),
        "wp": rng.normal(0, 0.3, (8, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "wd"], ["d"], name="deconv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["d", "shape"], ["t"], name="tokens"),
        helper.make_node("Transpose", ["t"], ["tt"], name="tt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "tt"], ["a"], name="attention"),
        helper.make_node("MatMul", ["a", "wp"], ["y"], name="proj"),
    ]
    return model_of(nodes, [("x", [1, 3, 12, 12])], [("y", [1, 8, 4])], inits)


def test_a_plan_for_ncnn_keeps_float_what_ncnn_cannot_run_int8_within_the_budget(tmp_path):
    """ncnn has no int8 Deconvolution nor MatMul of two activations: a plan made for it
    keeps those float from the start (so it measures what ncnn runs), says why, and counts
    them against --max-float; other targets quantize them."""
    from graphkit.backends import NO_INT8, layers_without_int8
    from graphkit.quant.collect import quantized_layers

    model = _deconv_attention_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    data = np.random.default_rng(1).normal(0, 1, (8, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=data)
    spec = {
        "input": {"name": "x", "layout": "NCHW", "size": [12, 12], "dtype": "float32"},
        "source": {"type": "npz", "path": str(tmp_path / "d.npz")},
    }
    rules = NO_INT8["ncnn"]
    assert layers_without_int8(model, ["tensorrt", "atc"]) == {}
    assert layers_without_int8(model, ["tensorrt", "ncnn"]) == {
        "deconv": rules["ConvTranspose"],
        "attention": rules["MatMul of two activations"],
    }
    small = {"fit_samples": 4, "score_samples": 4, "max_float": 0.5}
    plan = quantize(path, spec, recipe_of("default", **small, targets=("ncnn",)))
    assert sorted(plan.keep_float) == ["attention", "deconv"]
    assert plan.float_reasons["deconv"] == rules["ConvTranspose"]
    # 4 layers at 50 %: both slots spent on the target's float layers, no search
    assert plan.recipe["float_layers"] == {"count": 2, "of": 4, "for_targets": 2}
    assert "float" not in plan.recipe
    assert quantized_layers(model, plan, plan.keep_float) == ["conv", "proj"]
    # the plain recipe too; without the target every layer is int8
    plain = quantize(path, spec, recipe_of("plain", targets=("ncnn",)))
    assert sorted(plain.keep_float) == ["attention", "deconv"]
    assert plain.recipe["float_layers"] == {"count": 2, "of": 4, "for_targets": 2}
    plain = quantize(path, spec, recipe_of("plain"))
    assert plain.keep_float == [] and len(quantized_layers(model, plain)) == 4
    with pytest.raises(GraphkitError, match="unknown target 'nccn' in the recipe"):
        recipe_of("default", targets=("nccn",))


def test_calibrate_for_ncnn_writes_a_plan_whose_float_layers_ncnn_exports_as_they_are(
    tmp_path, capsys
):
    """`graphkit calibrate --target ncnn`: the plan keeps the deconv and the attention
    MatMul float, says so, and the ncnn export takes it with nothing left to run float
    against the plan."""
    pytest.importorskip("ncnn")
    from graphkit.quant.table import CalibrationTable

    path = tmp_path / "m.onnx"
    onnx.save(_deconv_attention_model(), path)
    data = np.random.default_rng(1).normal(0, 1, (4, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=data)
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"input": {"name": "x", "layout": "NCHW", "size": [12, 12], "dtype": "float32"},'
        f' "source": {{"type": "npz", "path": "{tmp_path / "d.npz"}"}}}}'
    )
    argv = ["calibrate", str(path), "--data", str(spec), "--recipe", "plain"]
    argv += ["-o", str(tmp_path / "p.json"), "--target", "ncnn", "--out-dir", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr()
    plan = CalibrationTable.load(tmp_path / "p.json")
    assert sorted(plan.keep_float) == ["attention", "deconv"]
    assert "2 layers float for the targets" in out.out + out.err
    assert "run float in ncnn" not in out.out + out.err  # the plan already says so
    int8 = (tmp_path / "o" / "ncnn" / "model.int8.param").read_text()
    assert "Deconvolution" in int8
