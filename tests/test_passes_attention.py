"""split-qkv: a fused q/k/v head reshape of 5 dimensions becomes three of 4, same values."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

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
