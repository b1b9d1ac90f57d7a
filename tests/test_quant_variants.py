"""Q/DQ candidates made by rewiring one int8 model compute what rebuilding each computes."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quant_planted import feeds, make_model, table_for

from graphkit.quant.qdq import insert_qdq
from graphkit.quant.refine import optimize_weights, restore_weights
from graphkit.quant.variants import QdqVariants, qdq_variants
from graphkit.runtime.ort import make_session

LAYERS = ["conv1", "conv2", "conv3"]


@pytest.fixture(scope="module")
def setup():
    model = make_model(outlier=3.0)
    samples = feeds(3)
    table = table_for(model, samples)
    rounded, _ = optimize_weights(model, samples, table)
    # a base whose bias differs from the float model's: a float layer must get the true one
    for t in rounded.graph.initializer:
        if t.name == "b1":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 0.5, "b1"))
    return model, samples, table, rounded


def outputs(model: onnx.ModelProto, samples) -> list[np.ndarray]:
    sess = make_session(model)
    return [sess.run(None, s)[0] for s in samples]


def test_every_float_subset_computes_what_a_rebuilt_model_computes(setup):
    model, samples, table, rounded = setup
    variants = QdqVariants(model, table, rounded)
    for k in range(len(LAYERS) + 1):
        for keep in itertools.combinations(LAYERS, k):
            rebuilt = insert_qdq(restore_weights(rounded, model, keep), table, keep_float=keep)
            for a, b in zip(outputs(rebuilt, samples), outputs(variants(keep), samples)):
                assert np.array_equal(a, b), keep


def test_a_float_layer_reads_the_float_models_weights_and_bias(setup):
    model, samples, table, rounded = setup
    every = QdqVariants(model, table, rounded)(LAYERS)
    assert {n.op_type for n in every.graph.node} == {"Conv", "Relu"}
    for a, b in zip(outputs(every, samples), outputs(model, samples)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    names = {t.name for t in every.graph.initializer}
    assert not any(n.endswith(("_quantized", "_scale")) for n in names)


def test_dead_qdq_nodes_and_initializers_are_dropped(setup):
    model, _, table, rounded = setup
    one = QdqVariants(model, table, rounded)(["conv1", "conv3"])
    read = {i for n in one.graph.node for i in n.input}
    made = {o for n in one.graph.node for o in n.output}
    assert all(o in read or o in {v.name for v in one.graph.output} for o in made)
    assert {t.name for t in one.graph.initializer} <= read
    dq = [n for n in one.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 2  # conv2's input and its weights, nothing else


def test_the_models_passed_in_are_not_changed(setup):
    model, _, table, rounded = setup
    before = (model.SerializeToString(), rounded.SerializeToString())
    variants = qdq_variants(model, table, rounded)
    variants(["conv2"])
    assert (model.SerializeToString(), rounded.SerializeToString()) == before


def test_without_a_base_the_int8_layers_quantize_the_float_weights(setup):
    model, samples, table, _ = setup
    plain = qdq_variants(model, table)(["conv2"])
    direct = insert_qdq(model, table, keep_float=["conv2"])
    for a, b in zip(outputs(plain, samples), outputs(direct, samples)):
        assert np.array_equal(a, b)


def test_stub_candidates_run_the_same_with_their_weights_in_memory(setup, monkeypatch):
    """Scoring candidates carry weight headers only and onnxruntime takes the bytes from
    OrtValues made once: every float subset computes what the full candidate computes,
    and a stub model without its weights is refused in one sentence."""
    from graphkit.errors import GraphkitError
    from graphkit.quant import variants as module
    from graphkit.quant.variants import scoring_candidates
    from graphkit.runtime.ort import IN_MEMORY

    model, samples, table, rounded = setup
    # the planted model's weights are small: every tensor a stub here
    monkeypatch.setattr(module, "STUB_MIN_ELEMENTS", 1)
    variants = QdqVariants(model, table, rounded)
    build, memory = scoring_candidates(variants)
    assert memory is not None
    for k in range(len(LAYERS) + 1):
        for keep in itertools.combinations(LAYERS, k):
            stubbed = build(keep)
            assert all(t.external_data[0].value == IN_MEMORY for t in stubbed.graph.initializer)
            assert not any(
                t.raw_data or t.float_data or t.int32_data or t.int64_data
                for t in stubbed.graph.initializer
            )
            sess = make_session(stubbed, memory=memory)
            got = [sess.run(None, s)[0] for s in samples]
            for a, b in zip(outputs(variants(keep), samples), got):
                assert np.array_equal(a, b), keep
    with pytest.raises(GraphkitError, match="weights they stand for"):
        make_session(build(()))


def test_small_tensors_stay_in_stub_candidates(setup):
    """Shapes, scales and zero points stay real (onnxruntime's shape inference reads
    Resize scales and Reshape shapes), so a candidate of small tensors has no stub."""
    from graphkit.quant.variants import scoring_candidates

    model, samples, table, rounded = setup
    build, memory = scoring_candidates(QdqVariants(model, table, rounded))
    stubbed = build(["conv2"])
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in stubbed.graph.initializer)
    assert memory == {}
    sess = make_session(stubbed, memory=memory)
    for a, s in zip(outputs(QdqVariants(model, table, rounded)(["conv2"]), samples), samples):
        assert np.array_equal(a, sess.run(None, s)[0])
