"""A candidate with one int8 layer runs from the float tensors where it starts to differ,
and scores what the whole candidate scores."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from quant_planted import feeds, table_for
from tiny import model_of

from graphkit.quant import sensitivity as sens
from graphkit.quant.sensitivity import OutputScorer, sensitivity
from graphkit.quant.suffix import boundaries, chunks, suffix_model
from graphkit.quant.variants import qdq_variants

LAYERS = ["conv1", "conv2", "conv3", "side"]


def branchy() -> onnx.ModelProto:
    """x -> conv1 -> relu -> conv2 -> (+ relu1 out: a skip) -> conv3 -> y, and a second
    head `side` read from relu1 (left out of the scored outputs in some tests)."""
    rng = np.random.default_rng(3)

    def w(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="skip"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3"),
        helper.make_node("Conv", ["r1", "w4"], ["z"], name="side"),
    ]
    inits = [w("w1", (8, 3, 3, 3)), w("w2", (8, 8, 3, 3)), w("w3", (4, 8, 1, 1))]
    inits.append(w("w4", (2, 8, 1, 1)))
    return model_of(
        nodes,
        [("x", [1, 3, 12, 12])],
        [("y", [1, 4, 12, 12]), ("z", [1, 2, 12, 12])],
        inits,
        name="branchy",
    )


@pytest.fixture(scope="module")
def setup():
    model = branchy()
    samples = feeds(3)
    return model, samples, table_for(model, samples)


def only(name):
    return [n for n in LAYERS if n != name]


def test_each_layer_starts_from_its_input_and_what_its_descendants_read_besides():
    got = boundaries(branchy(), LAYERS)
    assert list(got) == LAYERS  # graph order
    assert got["conv1"] == ["x"]
    assert got["conv2"] == ["r1"]  # the skip's other input is r1 too
    assert got["conv3"] == ["s"]
    assert got["side"] == ["r1"]


def test_a_suffix_scores_what_the_whole_candidate_scores_and_runs_fewer_nodes(setup):
    model, samples, table = setup
    candidate = qdq_variants(model, table)
    whole = OutputScorer(model, samples)
    bounds = boundaries(model, LAYERS)
    for name in LAYERS:
        cand = candidate(only(name))
        fast = whole.with_float(model, bounds[name])
        assert fast(cand) == pytest.approx(whole(cand), abs=1e-6), name
        kept = fast._float[0]
        part, inputs, _ = suffix_model(
            cand, whole.outputs, kept, {"y": np.float32, "z": np.float32}
        )
        assert set(inputs) <= set(kept)
        if name != "conv1":
            assert len(part.graph.node) < len(cand.graph.node), name


def test_a_layer_that_changes_no_scored_output_is_not_run(setup):
    model, samples, table = setup
    scorer = OutputScorer(model, samples, ["y"]).with_float(model, ["r1"])
    cand = qdq_variants(model, table)(only("side"))
    assert suffix_model(cand, ["y"], scorer._float[0], {"y": np.float32}) == (None, [], [])
    assert scorer.errors(cand) == [0.0]
    assert scorer(cand) == float("inf")


def test_a_candidate_reading_a_tensor_not_kept_runs_whole(setup):
    model, samples, table = setup
    cand = qdq_variants(model, table)(only("conv3"))
    scorer = OutputScorer(model, samples).with_float(model, ["r1"])  # not conv3's "s"
    assert suffix_model(cand, scorer.outputs, scorer._float[0], {}) is None
    assert scorer(cand) == pytest.approx(OutputScorer(model, samples)(cand), abs=1e-9)


def test_neighbours_share_a_group_until_their_tensors_pass_the_budget():
    bounds = {"a": ["t1"], "b": ["t1", "t2"], "c": ["t3"], "d": ["big"]}
    sizes = {"t1": 10, "t2": 10, "t3": 10, "big": 100}
    assert chunks(bounds, sizes, 30) == [
        (["a", "b", "c"], ["t1", "t2", "t3"]),
        (["d"], ["big"]),  # alone over the budget: a group of its own
    ]
    assert chunks(bounds, sizes, 15) == [
        (["a"], ["t1"]),
        (["b"], ["t1", "t2"]),
        (["c"], ["t3"]),
        (["d"], ["big"]),
    ]


def test_the_ranking_is_the_same_whatever_memory_the_float_tensors_get(setup, monkeypatch):
    model, samples, table = setup
    roomy = sensitivity(model, samples, table)
    monkeypatch.setattr(sens, "SUFFIX_CACHE_BYTES", 1)  # one layer per group
    tight = sensitivity(model, samples, table)
    assert [n for n, _ in tight] == [n for n, _ in roomy]
    assert [s for _, s in tight] == pytest.approx([s for _, s in roomy], abs=1e-6)
    whole = OutputScorer(model, samples)
    candidate = qdq_variants(model, table)
    for name, score in roomy:
        assert score == pytest.approx(whole(candidate(only(name))), abs=1e-6)
