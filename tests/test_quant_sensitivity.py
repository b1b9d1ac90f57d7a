"""Sensitivity ranking and automatic float fallback find and fix a planted int8-hostile layer."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from quant_planted import feeds, make_model, table_for, write_files

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.sensitivity import (
    OutputScorer,
    choose_keep_float,
    head_tensors,
    quantized_layers,
    sensitivity,
    with_keep_float,
)
from graphkit.quant.table import CalibrationTable
from graphkit.runtime.ort import make_session


@pytest.fixture(scope="module")
def planted():
    model = make_model()
    samples = feeds(4)
    return model, samples, table_for(model, samples)


def test_ranking_puts_the_planted_layer_first(planted):
    model, samples, table = planted
    ranking = sensitivity(model, samples, table)
    assert ranking[0][0] == "conv2"
    assert sorted(n for n, _ in ranking) == ["conv1", "conv2", "conv3"]
    scores = dict(ranking)
    # the planted layer alone costs far more than either other layer alone
    assert scores["conv2"] < min(scores["conv1"], scores["conv3"]) - 6.0


def test_auto_keep_float_keeps_the_planted_layer_and_raises_output_sqnr(planted):
    model, samples, table = planted
    choice = choose_keep_float(model, samples, table, count=1)
    assert choice.keep_float == ["conv2"]
    # independent check of the claimed gain: score both Q/DQ models from scratch
    scorer = OutputScorer(model, feeds(3, seed=7))
    before = scorer(insert_qdq(model, table))
    after = scorer(insert_qdq(model, with_keep_float(table, choice.keep_float)))
    assert after > before + 6.0
    assert choice.sqnr_db > choice.baseline_db


def test_target_db_stops_as_soon_as_it_is_met(planted):
    model, samples, table = planted
    scorer = OutputScorer(model, samples)
    none = choose_keep_float(model, scorer, table, target_db=-100.0)
    assert none.keep_float == [] and none.sqnr_db == none.baseline_db
    some = choose_keep_float(model, scorer, table, target_db=none.baseline_db + 3.0)
    assert some.keep_float[:1] == ["conv2"] and some.sqnr_db >= none.baseline_db + 3.0


def test_with_keep_float_records_nodes_and_drops_their_weights(planted):
    _, _, table = planted
    out = with_keep_float(table, ["conv2"])
    assert out.keep_float == ["conv2"] and "w2" not in out.weights and "w1" in out.weights
    assert "w2" in table.weights and table.keep_float == []  # the input is not modified
    assert quantized_layers(make_model(), out) == ["conv1", "conv3"]


def test_library_errors_are_one_sentence(planted):
    model, samples, table = planted
    with pytest.raises(GraphkitError, match="needs a layer count or an SQNR target"):
        choose_keep_float(model, samples, table)
    with pytest.raises(GraphkitError, match="at least one sample"):
        sensitivity(model, [], table)
    with pytest.raises(GraphkitError, match="is not an output of the model"):
        OutputScorer(model, samples, outputs=["nope"])
    with pytest.raises(GraphkitError, match="quantizes no layer"):
        sensitivity(model, samples, table, layers=["relu1"])


def test_cli_auto_keep_float_writes_it_into_the_table(tmp_path, capsys):
    model, spec = write_files(tmp_path)
    out, qdq = tmp_path / "t.json", tmp_path / "q.onnx"
    argv = ["calibrate", str(model), "--data", str(spec), "--method", "minmax", "-o", str(out)]
    argv += ["--no-round-weights", "--bias-correction", "off", "--target-agreement", "1"]
    assert main([*argv, "--qdq", str(qdq), "--max-float", "50%"]) == 0
    table = CalibrationTable.load(out)
    assert table.keep_float == ["conv2"] and "w2" not in table.weights
    assert "sensitivity" in table.float_reasons["conv2"]
    steps = table.recipe["float"]["steps"]
    assert steps[-1]["sqnr_db"] > table.recipe["methods"]["minmax"]["sqnr_db"]
    assert table.recipe["held_out"]["scored"] == 6  # all the spec has
    q = onnx.load(qdq)
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    assert list(conv2.input[:2]) == ["r1", "w2"]  # float inputs
    make_session(q)
    assert "conv2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-float", "150%"], "--max-float must be between 0% and 100%"),
        (["--max-float", "ten"], "--max-float takes a percentage"),
        (["--target-agreement", "1.5"], "--target-agreement must be in (0, 1]"),
        (["--sensitivity-samples", "0"], "must be at least 1, got 0"),
    ],
)
def test_cli_option_errors_are_one_sentence_and_write_nothing(tmp_path, capsys, extra, message):
    model, spec = write_files(tmp_path)
    out = tmp_path / "t.json"
    try:  # our checks return 2; argparse's (counts, types) exit with 2
        code = main(["calibrate", str(model), "--data", str(spec), "-o", str(out), *extra])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err
    assert not out.exists()


def test_scored_tensors_are_the_heads_of_an_in_graph_decoder():
    model = make_model()
    assert head_tensors(model) == ["y"]  # a plain conv output is scored as it is
    g = model.graph
    g.node.extend(
        [
            helper.make_node("Flatten", ["y"], ["flat"], axis=2),
            helper.make_node("ArgMax", ["flat"], ["peak"], axis=1, keepdims=0),
            helper.make_node("Cast", ["peak"], ["peak_f"], to=TensorProto.FLOAT),
            helper.make_node("Shape", ["y"], ["shape"]),
        ]
    )
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info("peak_f", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
        ]
    )
    assert head_tensors(model, ["peak_f"]) == ["y"]
    scorer = OutputScorer(model, feeds(2), head_tensors(model, ["peak_f"]))
    assert scorer.outputs == ["y"] and scorer(model) == float("inf")


def test_a_scorer_on_its_first_samples_scores_like_one_built_on_them(planted):
    model, samples, table = planted
    qdq = insert_qdq(model, table)
    inner = OutputScorer(model, samples, head_tensors(model)).subset(2)
    fresh = OutputScorer(model, samples[:2], head_tensors(model))
    assert len(inner.samples) == 2
    assert inner(qdq) == pytest.approx(fresh(qdq), abs=1e-9)
    assert inner(qdq) != pytest.approx(OutputScorer(model, samples)(qdq), abs=1e-6)
