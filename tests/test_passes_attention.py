"""split-qkv: a fused q/k/v head reshape of 5 dimensions becomes three of 4, same values."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.passhelpers import make, ops, run_pass, w

SLICES = {
    "split": lambda: [
        helper.make_node("Split", ["t", "ones"], ["s0", "s1", "s2"], axis=0),
        *(helper.make_node("Squeeze", [f"s{i}", "zero"], [f"p{i}"]) for i in range(3)),
    ],
    "gather": lambda: [
        helper.make_node("Gather", ["t", f"i{i}"], [f"p{i}"], axis=0) for i in range(3)
    ],
}


def attention(slices: str, perm=(2, 0, 3, 1, 4)):
    """x (1, 5, 8) -> Linear to 3 x 2 heads x 4 -> 5-D reshape -> q, k, v -> attention."""
    nodes = [
        helper.make_node("MatMul", ["x", "wqkv"], ["qkv"]),
        helper.make_node("Reshape", ["qkv", "shape5"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=list(perm)),
        *SLICES[slices](),
        helper.make_node("Transpose", ["p1"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["p0", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "p2"], ["y"]),
    ]
    inits = {
        "wqkv": w(8, 24),
        "shape5": np.array([1, 5, 3, 2, 4], np.int64),
        "ones": np.array([1, 1, 1], np.int64),
        "zero": np.array([0], np.int64),
        **{f"i{i}": np.array(i, np.int64) for i in range(3)},
    }
    return make(nodes, [("x", [1, 5, 8])], [("y", ["b", "h", "n", "d"])], inits)


@pytest.mark.parametrize("slices", sorted(SLICES))
def test_qkv_heads_become_4d_with_the_same_values(slices):
    model, result, diff = run_pass("split-qkv", attention(slices))
    assert result.changed and diff < 1e-6
    assert "Squeeze" not in ops(model) and "Gather" not in ops(model)
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    shapes = {i.name: i for i in model.graph.initializer}
    for r in reshapes:
        assert len(np.frombuffer(shapes[r.input[1]].raw_data, np.int64)) == 4


def test_other_head_layouts_are_left_alone():
    _, result, diff = run_pass("split-qkv", attention("split", perm=(2, 0, 1, 3, 4)))
    assert not result.changed and diff == 0.0


def test_a_reshape_that_does_not_split_the_last_axis_alone_is_left_alone():
    """x [1, 120] reshaped to [1, 5, 3, 2, 4]: splitting x's last axis in three would not
    give the same q, k, v, so nothing changes."""
    model = attention("gather")
    flat = make(
        [helper.make_node("Reshape", ["x", "flat"], ["x3"]), *model.graph.node],
        [("x", [1, 40])],
        [("y", ["b", "h", "n", "d"])],
        {
            "flat": np.array([1, 5, 8], np.int64),
            **{i.name: numpy_helper.to_array(i) for i in model.graph.initializer},
        },
    )
    flat.graph.node[1].input[0] = "x3"
    _, result, diff = run_pass("split-qkv", flat)
    assert result.changed and diff < 1e-6  # [1, 5, 24] after the first reshape: rewritten
    model = attention("gather")
    model.graph.node[0].output[0] = "qkv_flat"  # MatMul -> [1, 5, 24] -> reshape [1, 120]
    model.graph.node.insert(1, helper.make_node("Reshape", ["qkv_flat", "to2d"], ["qkv"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 120], np.int64), "to2d"))
    _, result, diff = run_pass("split-qkv", model)
    assert not result.changed and diff == 0.0
