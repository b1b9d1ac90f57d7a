"""Calibration sessions keep only the nodes their outputs depend on."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from graphkit.runtime.ort import make_session, prune_to_outputs, with_outputs


def _model_with_a_head():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="body"),
        helper.make_node("MatMul", ["a", "w"], ["head"], name="head"),  # only feeds "y"
        helper.make_node("Sigmoid", ["head"], ["y"], name="post"),
    ]
    g = helper.make_graph(
        nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w]
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_nodes_no_output_needs_are_dropped_with_their_weights():
    model = with_outputs(_model_with_a_head(), ["a"], prune=True)
    assert [n.name for n in model.graph.node] == ["body"]
    assert not model.graph.initializer  # "w" was read only by the dropped head
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    (a,) = make_session(model).run(["a"], {"x": x})
    np.testing.assert_array_equal(a, np.maximum(x, 0))


def test_outer_names_read_inside_subgraphs_keep_their_producers():
    model = _model_with_a_head()
    g = model.graph
    # an If whose branches read "head" from the outer scope: "head" must survive pruning
    then = helper.make_graph(
        [helper.make_node("Identity", ["head"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])],
    )
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    g.initializer.append(cond)
    g.node.append(helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]))
    removed = prune_to_outputs(model)
    assert removed == 1  # only the Sigmoid ("post") is unused
    assert {n.name for n in g.node} == {"body", "head", ""}


def test_segments_run_part_by_part_give_the_full_run_and_keep_only_what_is_read_later():
    from quant_synthetic import make_model, sample_feeds

    from graphkit.runtime.segments import Segments

    model = make_model()
    feeds = sample_feeds(1)[0]
    # r1 feeds two Convs of the second part; c2 and c3 meet again in the third
    parts = Segments(model, [["c1"], ["c2", "c3"], ["y", "z"]])
    env = dict(feeds)
    parts.run(0, env)
    assert set(env) == {"c1"}  # x: nothing after part 0 reads it
    parts.run(1, env)
    assert "c1" not in env and {"c2", "c3"} <= set(env)
    parts.run(2, env)
    full = make_session(with_outputs(model, ["y", "z"]), optimize=False)
    y, z = full.run(["y", "z"], feeds)
    np.testing.assert_array_equal(env["y"], y)
    np.testing.assert_array_equal(env["z"], z)
    assert "c2" not in env  # read by part 2 and by nothing after it
    # a change made between parts reaches the later parts (what bias correction relies on)
    env = dict(feeds)
    parts.run(0, env)
    parts.run(1, env)
    env["c3"] = env["c3"] + 1.0
    parts.run(2, env)
    assert not np.allclose(env["y"], y)
