"""`graphkit diff` on small synthetic FP32 / Q/DQ model pairs and real images folders."""

import json
import re

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper
from PIL import Image
from tiny import model_of

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.evaluators.diff import run_diff
from graphkit.evaluators.executors import OnnxExecutor
from graphkit.evaluators.per_layer import per_layer_errors, quantized_layers, single_layer_model
from graphkit.evaluators.report_html import render_html
from graphkit.metrics import RunningDiff


def conv_model(path):
    """x(1,3,16,16) -> conv -> relu -> conv -> add(skip) -> conv -> y(1,4,16,16)."""
    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a2"], name="add2"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["y"], name="conv3", pads=[1, 1, 1, 1]),
    ]
    inits = [
        w("w1", (8, 3, 3, 3)),
        w("b1", (8,)),
        w("w2", (8, 8, 3, 3)),
        w("b2", (8,)),
        w("w3", (4, 8, 3, 3)),
        w("b3", (4,)),
    ]
    m = model_of(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4, 16, 16])], inits, name="convnet")
    onnx.save(m, path)
    return path


def ort_qdq(src, dst, images):
    """Q/DQ model by onnxruntime.quantization (independent of graphkit's quantizer)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": im} for im in images])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    rng = np.random.default_rng(1)
    (d / "img").mkdir()
    arrays = []
    for i in range(5):
        px = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(px).save(d / "img" / f"{i}.png")
        arrays.append((px.transpose(2, 0, 1)[None] / 255.0).astype(np.float32))
    conv_model(d / "ref.onnx")
    ort_qdq(d / "ref.onnx", d / "q.onnx", arrays)
    spec = {
        "input": {"name": "x", "size": [16, 16], "layout": "NCHW", "std": 255.0},
        "source": {"type": "images", "images": "img", "resize": "stretch"},
    }
    (d / "data.yaml").write_text(yaml.safe_dump(spec))
    return d


def _diff_cli(pair, *options: str) -> int:
    """`graphkit diff ref.onnx q.onnx --data data.yaml OPTIONS` on the fixture pair."""
    args = ["diff", str(pair / "ref.onnx"), str(pair / "q.onnx"), "--data", str(pair / "data.yaml")]
    return main([*args, *options])


def test_onnx_vs_qdq_compares_every_shared_float_tensor_and_flags_quantized_layers(pair):
    rep = run_diff(str(pair / "ref.onnx"), str(pair / "q.onnx"), str(pair / "data.yaml"))
    names = {r.name for r in rep.rows}
    # onnxruntime's quantizer fuses Conv+Relu (c1 disappears) and ends in a Q/DQ pair
    # that produces the output y: no Q/DQ tensors, nothing shared is missing
    assert names == {"r1", "c2", "a2", "y"}
    by = {r.name: r for r in rep.rows}
    assert all(r.quantized for r in rep.rows)  # it quantizes Add's inputs too
    assert by["r1"].op_type == "Relu" and by["a2"].op_type == "Add" and by["y"].op_type == "Conv"
    assert by["y"].is_output and rep.samples == 5
    for r in rep.rows:
        assert 10 < r.diff.sqnr_db < 80 and 0.95 < r.diff.cosine <= 1.0


def test_streamed_metrics_equal_metrics_on_stored_activations(pair):
    rep = run_diff(str(pair / "ref.onnx"), str(pair / "q.onnx"), str(pair / "data.yaml"))
    from graphkit.data import iter_samples, load_input_spec

    ref, q = OnnxExecutor(str(pair / "ref.onnx")), OnnxExecutor(str(pair / "q.onnx"))
    feeds = [s.feeds for s in iter_samples(load_input_spec(str(pair / "data.yaml")))]
    row = next(r for r in rep.rows if r.name == "c2")
    qn = row.quant_name  # what the next layer reads: c2 after its Q/DQ pair
    assert qn == "c2_DequantizeLinear_Output"
    a = np.concatenate([ref.run(f, ["c2"])["c2"].ravel() for f in feeds]).astype(np.float64)
    b = np.concatenate([q.run(f, [qn])[qn].ravel() for f in feeds]).astype(np.float64)
    assert row.diff.sqnr_db == pytest.approx(10 * np.log10((a @ a) / ((a - b) @ (a - b))), rel=1e-6)
    assert row.diff.max_abs_err == pytest.approx(np.abs(a - b).max(), rel=1e-6)


def test_a_model_against_itself_is_exact(pair):
    rep = run_diff(str(pair / "ref.onnx"), str(pair / "ref.onnx"), str(pair / "data.yaml"), limit=2)
    assert rep.samples == 2
    assert all(r.diff.sqnr_db == float("inf") and r.diff.max_abs_err == 0 for r in rep.rows)


def test_single_layer_model_quantizes_only_that_layer(pair):
    ref, quant = onnx.load(pair / "ref.onnx"), onnx.load(pair / "q.onnx")
    layers = {n.name: n for n in quantized_layers(quant)}
    assert {"conv1", "conv2", "conv3"} <= set(layers)
    m = single_layer_model(ref, quant, layers["conv2"])
    onnx.checker.check_model(m)
    dq_consumers = {
        n.name
        for n in m.graph.node
        for t in n.input
        if any(p.op_type == "DequantizeLinear" and t in p.output for p in m.graph.node)
    }
    assert dq_consumers == {"conv2"}
    feeds = {"x": np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)}
    r = OnnxExecutor(ref).run(feeds, ["c1", "c2"])
    s = OnnxExecutor(m).run(feeds, ["c1", "c2"])
    np.testing.assert_allclose(r["c1"], s["c1"], rtol=1e-5, atol=1e-6)  # upstream untouched
    assert not np.allclose(r["c2"], s["c2"], atol=1e-6)  # conv2 itself quantized


def test_per_layer_mode_reports_each_layers_own_output_error(pair):
    rep = run_diff(
        str(pair / "ref.onnx"),
        str(pair / "q.onnx"),
        str(pair / "data.yaml"),
        per_layer=True,
        per_layer_samples=3,
    )
    rows = {r["node"]: r for r in rep.per_layer}
    assert {"conv1", "conv2", "conv3"} <= set(rows)
    full = next(r for r in rep.rows if r.name == "y").diff.sqnr_db
    for r in rows.values():
        # one layer alone does less damage than all of them together
        assert r["output_sqnr_db"] > full - 0.5


def test_each_layers_own_error_equals_the_reference_run_of_its_inner_tensor(pair):
    """The float twin inside the single-layer model stands for a second reference run."""
    ref, quant = onnx.load(pair / "ref.onnx"), onnx.load(pair / "q.onnx")
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(3)]
    rows = {r["node"]: r for r in per_layer_errors(ref, quant, feeds, layers={"conv2"})}
    layer = next(n for n in quantized_layers(quant) if n.name == "conv2")
    alone = OnnxExecutor(single_layer_model(ref, quant, layer))
    diff = RunningDiff()
    for f in feeds:
        diff.update(OnnxExecutor(ref).run(f, ["c2"])["c2"], alone.run(f, ["c2"])["c2"], "c2")
    assert rows["conv2"]["layer_sqnr_db"] == pytest.approx(diff.sqnr_db, abs=0.01)
    assert 0 < rows["conv2"]["layer_sqnr_db"] < 60  # quantized, and measurably so


def test_json_and_html_reports_hold_the_figures_and_are_self_contained(pair, capsys):
    out_json, out_html = pair / "r.json", pair / "r.html"
    code = _diff_cli(pair, "--json", str(out_json), "--html", str(out_html), "--per-layer")
    assert code == 0
    term = capsys.readouterr().out
    assert "SQNR" in term and "Conv" in term
    data = json.loads(out_json.read_text())
    page = out_html.read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert (
        "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    )
    assert "<svg" in page and "<style>" in page and "<script>" in page
    m = re.search(
        r'<script type="application/json" id="graphkit-diff-data">(.*?)</script>', page, re.DOTALL
    )
    embedded = json.loads(m.group(1))
    assert embedded["tensors"] == data["tensors"]
    assert {t["name"] for t in embedded["tensors"]} == {"r1", "c2", "a2", "y"}
    assert set(embedded["histograms"]) >= {"r1", "y"}
    assert sum(embedded["histograms"]["r1"]["counts"]) == pytest.approx(5 * 8 * 16 * 16)
    assert embedded["per_layer"] and all(r["node"] in page for r in embedded["per_layer"])
    worst = min(data["tensors"], key=lambda t: t["sqnr_db"])
    assert f'class="worst" data-name="{worst["name"]}"' in page


def _diff_with_table(pair, **equalized):
    """`run_diff` of the pair with a table giving r1 the threshold 1.5 (and `equalized`)."""
    from graphkit.quant.table import ActivationEntry, CalibrationTable

    acts = {"r1": ActivationEntry(amax=1.5)}
    CalibrationTable(method="minmax", activations=acts, **equalized).save(pair / "t.json")
    files = [str(pair / f) for f in ("ref.onnx", "q.onnx", "data.yaml")]
    return run_diff(*files, table=str(pair / "t.json"))


def test_table_thresholds_are_marked_on_histograms(pair):
    rep = _diff_with_table(pair)
    assert rep.histograms["r1"]["threshold"] == 1.5
    assert rep.histograms["c2"]["threshold"] is None
    assert '"threshold": 1.5' in render_html(rep.to_dict())
    assert not any("equalized" in n for n in rep.notes)


def test_an_equalized_plan_s_thresholds_come_with_a_note(pair):
    """Its thresholds between the rescaled Convs are not the reference model's: said."""
    from graphkit.quant.table import EqualizationEntry

    pairs = [EqualizationEntry(producer="c1", consumers=["c2"], scales=[0.5])]
    rep = _diff_with_table(pair, equalization=pairs)
    assert rep.histograms["r1"]["threshold"] == 1.5
    assert any("equalized 1 Conv pair(s)" in n for n in rep.notes)


def test_mismatched_models_and_data_are_refused_in_one_sentence(pair, tmp_path):
    bad = yaml.safe_load((pair / "data.yaml").read_text())
    bad["input"]["size"] = [32, 32]
    bad["source"]["images"] = str(pair / "img")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(GraphkitError, match="shape"):
        run_diff(str(pair / "ref.onnx"), str(pair / "q.onnx"), str(tmp_path / "bad.yaml"))
    with pytest.raises(GraphkitError, match="does not exist"):
        run_diff(str(pair / "ref.onnx"), str(tmp_path / "nope.onnx"), str(pair / "data.yaml"))


def test_graphkit_qdq_model_marks_only_conv_layers_quantized_and_runs_per_layer(pair):
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.table import ActivationEntry, CalibrationTable

    ref = onnx.load(pair / "ref.onnx")
    feeds = {"x": np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)}
    acts = OnnxExecutor(ref).run(feeds, ["x", "r1", "a2"])
    table = CalibrationTable(
        method="minmax",
        activations={k: ActivationEntry(amax=float(np.abs(v).max())) for k, v in acts.items()},
    )
    onnx.save(insert_qdq(ref, table), pair / "gk.onnx")
    rep = run_diff(
        str(pair / "ref.onnx"), str(pair / "gk.onnx"), str(pair / "data.yaml"), per_layer=True
    )
    by = {r.name: r for r in rep.rows}
    assert {"c1", "r1", "c2", "a2", "y"} <= set(by)  # graphkit keeps every tensor name
    assert by["c1"].quantized and by["c2"].quantized and by["y"].quantized
    assert not by["r1"].quantized and not by["a2"].quantized
    assert {r["node"] for r in rep.per_layer} == {"conv1", "conv2", "conv3"}
    assert all(r["output_sqnr_db"] > 15 for r in rep.per_layer)


def test_comparing_in_groups_of_tensors_gives_the_same_figures(pair):
    whole = run_diff(str(pair / "ref.onnx"), str(pair / "q.onnx"), str(pair / "data.yaml"))
    passes = []
    grouped = run_diff(
        str(pair / "ref.onnx"),
        str(pair / "q.onnx"),
        str(pair / "data.yaml"),
        histograms=True,
        max_tensors_per_run=1,
        on_pass=lambda i, k: passes.append((i, k)),
    )
    n = len(whole.rows)
    assert passes == [(i, n) for i in range(n)]
    assert grouped.samples == whole.samples == 5
    a, b = whole.to_dict()["tensors"], grouped.to_dict()["tensors"]
    assert [t["name"] for t in a] == [t["name"] for t in b]
    for x, y in zip(a, b):  # an outputs-only session is optimized: float rounding differs
        assert y["sqnr_db"] == pytest.approx(x["sqnr_db"], rel=1e-6)
        assert y["max_abs_err"] == pytest.approx(x["max_abs_err"], rel=1e-5)
    assert set(grouped.histograms) >= {"r1", "y"}
    assert any("passes" in note for note in grouped.notes)


def test_max_tensors_per_run_below_one_is_refused_in_one_sentence(pair, capsys):
    with pytest.raises(SystemExit) as exc:
        _diff_cli(pair, "--max-tensors-per-run", "0")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max-tensors-per-run: must be at least 1" in err and "Traceback" not in err


def test_default_report_has_each_layers_own_error_equal_to_its_single_layer_error(pair):
    rep = run_diff(
        str(pair / "ref.onnx"),
        str(pair / "q.onnx"),
        str(pair / "data.yaml"),
        per_layer=True,
        per_layer_samples=3,
    )
    own = {r["node"]: r for r in rep.own}
    single = {r["node"]: r for r in rep.per_layer}
    assert set(own) == set(single) >= {"conv1", "conv2", "conv3"}
    for name, r in single.items():
        # the single-layer model has float everything upstream: its own-output SQNR is
        # the layer's own error, measured here without running the network per layer
        if r["layer_sqnr_db"] is not None:
            assert own[name]["sqnr_db"] == pytest.approx(r["layer_sqnr_db"], abs=1e-3)
    # conv3 is the last layer: its own error is the output error with it alone quantized
    # (onnxruntime renamed its output; matched through the node name)
    assert own["conv3"]["sqnr_db"] == pytest.approx(single["conv3"]["output_sqnr_db"], abs=1e-3)
    assert all(r["sqnr_db"] > 20 for r in own.values())


def test_own_error_table_is_printed_by_default_and_no_own_skips_it(pair, capsys):
    out_json = pair / "own.json"
    assert _diff_cli(pair, "--json", str(out_json)) == 0
    assert "own error" in capsys.readouterr().out
    assert {r["node"] for r in json.loads(out_json.read_text())["own"]} >= {"conv1", "conv3"}
    assert _diff_cli(pair, "--json", str(out_json), "--no-own") == 0
    assert "own error" not in capsys.readouterr().out
    assert json.loads(out_json.read_text())["own"] is None


def test_html_histogram_axis_labels_are_rounded_and_the_last_one_stays_inside(tmp_path):
    """Runs the page's own script in node with a stub DOM and reads the SVG it draws."""
    import shutil
    import subprocess

    from graphkit.evaluators.report_html import JS

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page script cannot be run here")
    hist = {
        "counts": [5, 0, 3, 1],
        "upper": 6.283185307179586,
        "absmax": 6.283185307179586,
        "min": 0.000123456789,
        "max": 6.283185307179586,
        "count": 9,
        "threshold": 6.1234567,
    }
    data = {"histograms": {"t": hist}}
    stub = (
        "const boxes = {}; const el = id => (boxes[id] = boxes[id] || "
        "{id, textContent: id === 'graphkit-diff-data' ? JSON.stringify(DATA) : '', "
        "innerHTML: '', value: '', options: [1], onchange: null});\n"
        "var document = {getElementById: el, querySelectorAll: () => []};\n"
    ).replace("DATA", json.dumps(data))
    script = stub + JS + "\nhist('t'); console.log(boxes['hist'].innerHTML);\n"
    (tmp_path / "page.js").write_text(script)
    page = str(tmp_path / "page.js")
    svg = subprocess.run([node, page], check=False, capture_output=True, text=True)
    assert svg.returncode == 0, svg.stderr
    ticks = re.findall(r'text-anchor="(\w+)">([^<]+)</text>', svg.stdout)
    axis = [(a, v) for a, v in ticks if not v.startswith(("log10", "threshold"))]
    assert [v for _, v in axis] == ["0", "1.571", "3.142", "4.712", "6.283"]
    assert axis[0][0] == "start" and axis[-1][0] == "end"
    assert "min 1.23e-4, max 6.283" in svg.stdout and "threshold 6.123" in svg.stdout
    assert re.search(r'text-anchor="end"[^>]*>threshold', svg.stdout)  # near the right edge


def test_tensor_names_with_markup_cannot_break_the_html_page(pair):
    data = run_diff(str(pair / "ref.onnx"), str(pair / "q.onnx"), str(pair / "data.yaml")).to_dict()
    evil = ["<!--<script>", "</script><b>x", 'a"b&c']
    for t, name in zip(data["tensors"], evil):
        t["name"] = name
    page = render_html(data)
    for name in evil[:2]:
        assert name not in page  # escaped everywhere, in the HTML and in the JSON
    m = re.search(
        r'<script type="application/json" id="graphkit-diff-data">(.*?)</script>', page, re.DOTALL
    )
    embedded = json.loads(m.group(1))
    assert [t["name"] for t in embedded["tensors"][:3]] == evil
    assert page.count("<script") == 2  # the data and the page's own script, nothing else


def _ort_quantized(tmp_path, nodes, inits, outputs, seed=0):
    """(reference, onnxruntime Q/DQ model, 2 samples) of a tiny model on x(1,3,8,8)."""
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in inits.items()}
    ref = model_of(nodes, [("x", [1, 3, 8, 8])], outputs, weights)
    onnx.save(ref, tmp_path / "ref.onnx")
    images = [rng.random((1, 3, 8, 8), dtype=np.float32) for _ in range(4)]
    ort_qdq(tmp_path / "ref.onnx", tmp_path / "q.onnx", images)
    samples = [{"x": rng.random((1, 3, 8, 8), dtype=np.float32)} for _ in range(2)]
    return ref, onnx.load(tmp_path / "q.onnx"), samples


def _shape_argmax_pair(tmp_path):
    """A quantized Conv output read by Shape and ArgMax (int64 outputs, not graph outputs):
    onnxruntime gives them the Conv output's dequantized tensor, so both are Q/DQ layers."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c1"], ["s"], name="shape"),
        helper.make_node("Reshape", ["c2", "s"], ["r"], name="reshape"),
        helper.make_node("ArgMax", ["c1"], ["am"], name="argmax", axis=1, keepdims=1),
        helper.make_node("Cast", ["am"], ["amf"], name="cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["r", "amf"], ["y"], name="add"),
    ]
    inits = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,)}
    return _ort_quantized(tmp_path, nodes, inits, [("y", [1, 8, 8, 8])])


def _read_twice_pair(tmp_path, op):
    """A quantized Conv output read by `op` in both of its inputs, then another Conv."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(op, ["c1", "c1"], ["m"], name="twice"),
        helper.make_node("Conv", ["m", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (4, 8, 3, 3), "b2": (4,)}
    return _ort_quantized(tmp_path, nodes, inits, [("y", [1, 4, 8, 8])])


def test_layers_with_integer_outputs_get_output_rows_without_a_float_twin(tmp_path):
    ref, quant, samples = _shape_argmax_pair(tmp_path)
    layers = {n.name: n.op_type for n in quantized_layers(quant)}
    assert layers["shape"] == "Shape" and layers["argmax"] == "ArgMax"  # the bug's setting
    rows = {r["node"]: r for r in per_layer_errors(ref, quant, samples)}
    assert set(layers) <= set(rows)
    for name in ("shape", "argmax"):
        r = rows[name]
        assert "skipped" not in r and r["layer_sqnr_db"] is None
        assert set(r) == {
            "node",
            "op_type",
            "output",
            "output_sqnr_db",
            "output_cosine",
            "output_rel_l2",
            "layer_sqnr_db",
        }
    # Shape of a dequantized tensor is its shape: quantizing Shape alone changes nothing
    assert rows["shape"]["output_sqnr_db"] is None and rows["shape"]["output_cosine"] == 1.0
    assert rows["argmax"]["output_cosine"] is not None
    # the float layers keep their own-output SQNR from the float twin
    assert 0 < rows["conv2"]["layer_sqnr_db"] < 80


def test_integer_outputs_are_found_by_inference_and_an_unknown_type_falls_back(
    tmp_path, monkeypatch
):
    import onnx_ir as ir

    from graphkit.evaluators import per_layer
    from graphkit.irgraph import to_ir

    ref, quant, samples = _shape_argmax_pair(tmp_path)
    rows = per_layer_errors(ref, quant, samples)
    # neither model declares the layers' output types: onnx shape inference tells them
    del quant.graph.value_info[:]
    assert not ref.graph.value_info
    ref_ir = to_ir(ref)
    types = per_layer.ElementTypes(ref_ir)
    by_name = {v.name: v for n in ref_ir.graph for v in n.outputs}
    assert types(by_name["s"], None) == types(by_name["am"], None) == ir.DataType.INT64
    assert types(by_name["c2"], None) == ir.DataType.FLOAT
    assert per_layer_errors(ref, quant, samples) == rows
    # nothing tells: the twin is tried as float, refused by onnxruntime, and dropped
    monkeypatch.setattr(per_layer.ElementTypes, "__call__", lambda self, value, given: None)
    assert per_layer_errors(ref, quant, samples) == rows


def test_own_errors_finish_on_layers_with_integer_outputs(tmp_path):
    from graphkit.evaluators.own_error import own_errors

    ref, quant, samples = _shape_argmax_pair(tmp_path)
    rows = {r["node"]: r for r in own_errors(ref, quant, samples)}
    assert {"conv2", "shape", "argmax"} <= set(rows)
    assert rows["shape"]["sqnr_db"] is None and rows["shape"]["max_abs_err"] == 0.0
    assert 0 < rows["conv2"]["sqnr_db"] < 80


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_own_errors_copy_the_chain_of_a_tensor_read_twice_once(tmp_path, op):
    from graphkit.evaluators.own_error import LayerAlone, own_errors
    from graphkit.irgraph import to_ir

    ref, quant, samples = _read_twice_pair(tmp_path, op)
    layer = next(n for n in to_ir(quant).graph if n.name == "twice")
    assert layer.inputs[0] is layer.inputs[1]  # one dequantized tensor in both inputs
    one = LayerAlone(to_ir(quant), layer)
    assert [n.op_type for n in one.nodes] == ["QuantizeLinear", "DequantizeLinear", op]
    rows = {r["node"]: r for r in own_errors(ref, quant, samples)}
    # the layer alone: its float input through the quantizer's Q/DQ, then the op
    c1 = [OnnxExecutor(ref).run(f, ["c1", "m"]) for f in samples]
    dq = next(n for n in quant.graph.node if n.output[0] == layer.inputs[0].name)
    inits = {i.name: numpy_helper.to_array(i) for i in quant.graph.initializer}
    scale, zero = inits[dq.input[1]], inits[dq.input[2]].astype(np.float32)
    diff = RunningDiff()
    for t in c1:
        x = (np.clip(np.round(t["c1"] / scale) + zero, -128, 127) - zero) * scale
        diff.update(t["m"], x * x if op == "Mul" else x + x, "m")
    assert rows["twice"]["sqnr_db"] == pytest.approx(diff.sqnr_db, abs=1e-3)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_per_layer_copies_the_chain_of_a_tensor_read_twice_once(tmp_path, op):
    ref, quant, samples = _read_twice_pair(tmp_path, op)
    layer = next(n for n in quantized_layers(quant) if n.name == "twice")
    m = single_layer_model(ref, quant, layer)
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1
    twice = next(n for n in m.graph.node if n.name == "twice")
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
    assert list(twice.input) == [dq.output[0]] * 2
    rows = {r["node"]: r for r in per_layer_errors(ref, quant, samples)}
    assert "skipped" not in rows["twice"]
    assert 0 < rows["twice"]["layer_sqnr_db"] < 80 and 0 < rows["twice"]["output_sqnr_db"] < 80
