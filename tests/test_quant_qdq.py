"""Q/DQ insertion rules, and that the Q/DQ model runs in onnxruntime close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quant_synthetic import make_model, sample_feeds

from graphkit.errors import GraphkitError
from graphkit.quant.calibrate import build_table
from graphkit.quant.calibrators import threshold
from graphkit.quant.collect import collect, select_tensors
from graphkit.quant.qdq import insert_qdq
from graphkit.runtime.ort import make_session


def _table(model, method="minmax", keep_float=(), n=6):
    tensors = select_tensors(model, "quantizable", keep_float)
    stats = collect(model, lambda: sample_feeds(n), tensors, bins=256)
    return build_table(model, stats, method, keep_float=keep_float)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def qdq(model):
    return insert_qdq(model, _table(model))


def _consts(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _by_output(m):
    return {o: n for n in m.graph.node for o in n.output}


def test_calibrated_tensors_are_the_inputs_of_quantized_layers(model):
    assert select_tensors(model) == ["x", "r1", "r2", "f"]
    assert "c2" in select_tensors(model, "all") and "y" in select_tensors(model, "all")
    assert select_tensors(model, "quantizable", keep_float=["conv1"]) == ["r1", "r2", "f"]


def test_zero_points_are_int8_zero_and_scales_positive(qdq):
    consts = _consts(qdq)
    qdq_nodes = [n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq_nodes
    for n in qdq_nodes:
        scale, zp = consts[n.input[1]], consts[n.input[2]]
        assert np.all(scale > 0) and scale.dtype == np.float32
        assert zp.dtype == np.int8 and np.all(zp == 0)


def test_weights_per_channel_on_the_output_axis(qdq):
    consts, prod = _consts(qdq), _by_output(qdq)
    want = {
        "conv1": (0, 8),
        "dwconv": (0, 8),
        "pwconv": (0, 8),
        "deconv": (1, 4),
        "fc": (0, 10),
        "matmul": (1, 6),
    }
    for node in qdq.graph.node:
        if node.name not in want:
            continue
        dq = prod[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert (axis, consts[dq.input[1]].size) == want[node.name]
        assert consts[dq.input[0]].dtype == np.int8
        assert np.abs(consts[dq.input[0]]).max() == 127  # absmax channel maps to 127


def test_activations_per_tensor_and_shared_tensor_gets_one_pair(qdq):
    consts, prod = _consts(qdq), _by_output(qdq)
    quantizes = [n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(quantizes) == ["f", "r1", "r2", "x"]  # r1 feeds two convs: one Q
    dw = next(n for n in qdq.graph.node if n.name == "dwconv")
    pw = next(n for n in qdq.graph.node if n.name == "pwconv")
    assert dw.input[0] == pw.input[0] and prod[dw.input[0]].op_type == "DequantizeLinear"
    assert consts[prod[dw.input[0]].input[1]].shape == ()
    # everything else stays float: Add, Relu and the bias read float tensors
    add = next(n for n in qdq.graph.node if n.name == "add")
    assert list(add.input) == ["c2", "c3"]


def test_qdq_model_runs_in_onnxruntime_close_to_fp32(model, qdq):
    ref, got = make_session(model), make_session(qdq)
    for feeds in sample_feeds(3, seed=7):
        a, b = ref.run(None, feeds), got.run(None, feeds)
        for x, y in zip(a, b):
            sqnr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((x - y).astype(float) ** 2))
            assert sqnr > 25.0
            assert not np.array_equal(x, y)  # really quantized


def test_keep_float_leaves_layer_untouched(model):
    table = _table(model)
    out = insert_qdq(model, table, keep_float=["pwconv", "fc"])
    nodes = {n.name: n for n in out.graph.node}
    assert list(nodes["pwconv"].input) == ["r1", "w3"]
    assert list(nodes["fc"].input) == ["f", "w5", "b5"]
    assert nodes["dwconv"].input[0] != "r1"  # the other consumer of r1 is still quantized
    assert nodes["matmul"].input[0] != "f"
    make_session(out).run(None, sample_feeds(1)[0])


def test_table_keep_float_is_honoured_and_unknown_names_refused(model):
    table = _table(model, keep_float=["conv1"])
    out = insert_qdq(model, table)
    assert list(next(n for n in out.graph.node if n.name == "conv1").input) == ["x", "w1", "b1"]
    assert "x" not in table.activations
    with pytest.raises(GraphkitError, match="'nope' is not a node"):
        insert_qdq(model, table, keep_float=["nope"])


def test_layer_without_activation_entry_stays_float(model):
    table = _table(model)
    del table.activations["r2"]
    out = insert_qdq(model, table)
    assert list(next(n for n in out.graph.node if n.name == "deconv").input) == ["r2", "w4"]


def test_old_opset_is_upgraded(model):
    old = make_model(opset=11)
    out = insert_qdq(old, _table(old))
    assert next(o.version for o in out.opset_import if o.domain == "") >= 13
    make_session(out).run(None, sample_feeds(1)[0])


def test_table_for_another_model_is_refused(model):
    table = _table(model)
    table.weights["w1"].amax = table.weights["w1"].amax[:3]
    with pytest.raises(GraphkitError, match="another model"):
        insert_qdq(model, table)


def test_split_runs_and_overlapped_runs_give_identical_statistics(model):
    tensors = select_tensors(model)
    one = collect(model, lambda: sample_feeds(4), tensors, bins=256)
    split = collect(model, lambda: sample_feeds(4), tensors, bins=256, max_outputs_per_run=1)
    overlapped = collect(model, lambda: sample_feeds(4), tensors, bins=256, overlap=True)
    assert one == split == overlapped


def test_minmax_from_in_graph_reductions_equals_minmax_from_histograms(model):
    tensors = select_tensors(model)
    full = collect(model, lambda: sample_feeds(4), tensors, bins=256)
    ranges = collect(model, lambda: sample_feeds(4), tensors, bins=256, histograms=False)
    for t in tensors:
        assert (ranges[t].min, ranges[t].max, ranges[t].count) == (
            full[t].min,
            full[t].max,
            full[t].count,
        )
        assert threshold("minmax", ranges[t]) == threshold("minmax", full[t])
    with pytest.raises(GraphkitError, match="needs histograms"):
        threshold("entropy", ranges["r1"])
