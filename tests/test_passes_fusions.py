"""Regression tests for the fusion passes: the cases they must fuse and the ones they must not."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.passhelpers import make, ops, run_pass, w


def bn_inits(c: int) -> dict:
    return {"g": w(c, lo=0.5), "b": w(c), "m": w(c), "v": w(c, lo=0.5)}


BN = ["g", "b", "m", "v"]


# --- BatchNormalization -----------------------------------------------------------------------


@pytest.mark.parametrize("group", [1, 2, 4])
def test_bn_folds_into_grouped_conv_transpose_using_ckrs_layout(group):
    cin, per = 4, 3  # weight [C_in, C_out/group, k, k]; C_out = per * group
    cout = per * group
    model = make(
        [
            helper.make_node(
                "ConvTranspose",
                ["x", "W", "B"],
                ["y"],
                group=group,
                strides=[2, 2],
                kernel_shape=[3, 3],
            ),
            helper.make_node("BatchNormalization", ["y", *BN], ["z"], epsilon=1e-3),
        ],
        [("x", [1, cin, 5, 5])],
        [("z", [1, cout, 11, 11])],
        {"W": w(cin, per, 3, 3), "B": w(cout), **bn_inits(cout)},
    )
    new, result, diff = run_pass("fuse-bn", model)
    assert ops(new) == ["ConvTranspose"]
    assert result.changed and "BatchNormalization" in result.notes[0]
    assert diff < 1e-4


def test_bn_folds_into_conv_without_bias_and_gemm_with_transb():
    conv = make(
        [
            helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["y", *BN], ["z"]),
        ],
        [("x", [1, 3, 6, 6])],
        [("z", [1, 5, 6, 6])],
        {"W": w(5, 3, 3, 3), **bn_inits(5)},
    )
    new, _, diff = run_pass("fuse-bn", conv)
    assert ops(new) == ["Conv"] and len(new.graph.node[0].input) == 3 and diff < 1e-4

    gemm = make(
        [
            helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0),
            helper.make_node("BatchNormalization", ["y", *BN], ["z"]),
        ],
        [("x", [2, 4])],
        [("z", [2, 6])],
        {"W": w(6, 4), "C": w(6), **bn_inits(6)},
    )
    new, _, diff = run_pass("fuse-bn", gemm)
    assert ops(new) == ["Gemm"] and diff < 1e-4


def test_bn_not_folded_when_conv_output_is_also_read_elsewhere():
    model = make(
        [
            helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[1, 1]),
            helper.make_node("BatchNormalization", ["y", *BN], ["z"]),
            helper.make_node("Relu", ["y"], ["r"]),
        ],
        [("x", [1, 2, 4, 4])],
        [("z", [1, 3, 4, 4]), ("r", [1, 3, 4, 4])],
        {"W": w(3, 2, 1, 1), **bn_inits(3)},
    )
    new, result, _ = run_pass("fuse-bn", model)
    assert not result.changed and "BatchNormalization" in ops(new)


def test_bn_shared_weights_are_not_changed_for_the_other_conv():
    model = make(
        [
            helper.make_node("Conv", ["x", "W"], ["y1"], kernel_shape=[1, 1]),
            helper.make_node("BatchNormalization", ["y1", *BN], ["z1"]),
            helper.make_node("Conv", ["x", "W"], ["z2"], kernel_shape=[1, 1]),
        ],
        [("x", [1, 2, 4, 4])],
        [("z1", [1, 3, 4, 4]), ("z2", [1, 3, 4, 4])],
        {"W": w(3, 2, 1, 1), **bn_inits(3)},
    )
    _new, result, diff = run_pass("fuse-bn", model)
    assert result.changed and diff < 1e-4


# --- Pad ---------------------------------------------------------------------------------------


def pad_model(amounts, consumer, value=None, mode="constant", **attrs):
    ins = ["x", "P"] + (["V"] if value is not None else [])
    inits = {"P": np.array(amounts, np.int64)}
    if value is not None:
        inits["V"] = np.array(value, np.float32)
    nodes = [helper.make_node("Pad", ins, ["p"], mode=mode)]
    if consumer == "Conv":
        nodes.append(helper.make_node("Conv", ["p", "W"], ["y"], kernel_shape=[3, 3], **attrs))
        inits["W"] = w(4, 2, 3, 3)
    else:
        nodes.append(helper.make_node(consumer, ["p"], ["y"], kernel_shape=[3, 3], **attrs))
    return make(nodes, [("x", [1, 2, 7, 6])], [("y", [None] * 4)], inits)


def test_pad_with_asymmetric_pads_folds_into_conv_pads():
    model = pad_model([0, 0, 1, 2, 0, 0, 2, 0], "Conv", pads=[1, 0, 0, 1])
    new, _result, diff = run_pass("fuse-pad", model)
    assert ops(new) == ["Conv"] and diff < 1e-5
    pads = list(
        helper.get_attribute_value(next(a for a in new.graph.node[0].attribute if a.name == "pads"))
    )
    assert pads == [2, 2, 2, 1]  # [h_begin, w_begin, h_end, w_end]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"value": 0.5},  # non-zero constant
        {"mode": "reflect"},
        {"pads": [0, 1, 1, 1, 0, 0, 1, 1]},  # pads the channel axis
    ],
)
def test_pad_that_is_not_zero_padding_of_spatial_axes_is_not_fused(kwargs):
    pads = kwargs.pop("pads", [0, 0, 1, 1, 0, 0, 1, 1])
    model = pad_model(pads, "Conv", **kwargs)
    if pads[1]:
        model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(w(4, 3, 3, 3), "W"))
    new, result, diff = run_pass("fuse-pad", model)
    assert not result.changed and ops(new) == ["Pad", "Conv"] and diff == 0


def test_pad_into_average_pool_includes_the_zeros_in_the_mean():
    model = pad_model([0, 0, 1, 1, 0, 0, 1, 1], "AveragePool")  # count_include_pad defaults to 0
    new, _result, diff = run_pass("fuse-pad", model)
    assert ops(new) == ["AveragePool"] and diff < 1e-6
    attrs = {a.name: helper.get_attribute_value(a) for a in new.graph.node[0].attribute}
    assert attrs["count_include_pad"] == 1


def test_pad_not_fused_into_pool_that_excludes_its_own_padding_or_is_max():
    excl = pad_model(
        [0, 0, 1, 1, 0, 0, 1, 1], "AveragePool", pads=[1, 1, 1, 1], count_include_pad=0
    )
    _, result, _ = run_pass("fuse-pad", excl)
    assert not result.changed
    mx = pad_model([0, 0, 1, 1, 0, 0, 1, 1], "MaxPool")
    _, result, _ = run_pass("fuse-pad", mx)
    assert not result.changed
    too_big = pad_model(
        [0, 0, 2, 2, 0, 0, 2, 2], "AveragePool", pads=[1, 1, 1, 1], count_include_pad=1
    )
    _, result, _ = run_pass("fuse-pad", too_big)
    assert not result.changed  # pads 3 >= window 3 would be rejected by onnxruntime


def test_pad_attribute_form_of_old_opsets_folds_too():
    model = make(
        [
            helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 0, 0, 0, 0, 1], mode="constant"),
            helper.make_node("Conv", ["p", "W"], ["y"], kernel_shape=[3, 3]),
        ],
        [("x", [1, 2, 5, 5])],
        [("y", [1, 4, 4, 4])],
        {"W": w(4, 2, 3, 3)},
        opset=9,
    )
    new, _, diff = run_pass("fuse-pad", model)
    assert ops(new) == ["Conv"] and diff < 1e-5


# --- constant Mul/Add into Conv ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (1,), ()])
def test_per_channel_mul_and_add_fold_into_conv(shape):
    model = make(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[1, 1]),
            helper.make_node("Mul", ["S", "y"], ["m"]),
            helper.make_node("Add", ["m", "A"], ["z"]),
        ],
        [("x", [1, 3, 4, 4])],
        [("z", [1, 4, 4, 4])],
        {"W": w(4, 3, 1, 1), "B": w(4), "S": w(*shape, lo=0.5), "A": w(*shape)},
    )
    new, _result, diff = run_pass("fuse-conv-affine", model)
    assert ops(new) == ["Conv"] and diff < 1e-5


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Mul", ["y", "K"], ["z"]),  # K varies along H and W
        helper.make_node(
            "Sub", ["K", "y"], ["z"]
        ),  # c - x is not x*a + b with a > 0 ... nor fusable
        helper.make_node("Div", ["K", "y"], ["z"]),
    ],
)
def test_constant_that_is_not_per_channel_or_not_affine_is_not_fused(node):
    model = make(
        [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[1, 1]), node],
        [("x", [1, 3, 4, 4])],
        [("z", [1, 4, 4, 4])],
        {"W": w(4, 3, 1, 1), "K": w(1, 4, 4, 4, lo=0.5)},
    )
    new, result, diff = run_pass("fuse-conv-affine", model)
    assert not result.changed and len(new.graph.node) == 2 and diff == 0


# --- MatMul + Add ---------------------------------------------------------------------------------


def test_matmul_add_becomes_gemm_only_for_2d():
    two_d = make(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["B", "y"], ["z"])],
        [("x", [3, 4])],
        [("z", [3, 5])],
        {"W": w(4, 5), "B": w(5)},
    )
    new, _, diff = run_pass("matmul-to-gemm", two_d)
    assert ops(new) == ["Gemm"] and diff < 1e-5
    three_d = make(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "B"], ["z"])],
        [("x", [2, 3, 4])],
        [("z", [2, 3, 5])],
        {"W": w(4, 5), "B": w(5)},
    )
    new, result, _ = run_pass("matmul-to-gemm", three_d)
    assert not result.changed and ops(new) == ["MatMul", "Add"]


def test_add_that_would_grow_the_matmul_result_is_not_a_gemm_bias():
    model = make(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "B"], ["z"])],
        [("x", [1, 4])],
        [("z", [3, 5])],
        {"W": w(4, 5), "B": w(3, 5)},
    )
    _new, result, _ = run_pass("matmul-to-gemm", model)
    assert not result.changed


# --- Transposes ---------------------------------------------------------------------------------


def test_inverse_transpose_pair_cancels_and_output_name_survives():
    model = make(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["out"], perm=[0, 3, 1, 2]),
        ],
        [("x", [1, 2, 3, 4])],
        [("out", [1, 2, 3, 4])],
    )
    new, _result, diff = run_pass("cancel-transposes", model)
    assert ops(new) == ["Relu"] and new.graph.node[0].output[0] == "out" and diff == 0


def test_transpose_pair_that_is_not_inverse_is_merged_not_cancelled():
    model = make(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["out"], perm=[0, 2, 1, 3]),
        ],
        [("x", [1, 2, 3, 4])],
        [("out", [1, 4, 3, 2])],
    )
    new, result, diff = run_pass("cancel-transposes", model)
    assert ops(new) == ["Transpose"] and diff == 0
    assert "cancelled" not in " ".join(result.notes)


def test_transpose_read_elsewhere_is_kept_when_its_inverse_goes():
    model = make(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["back"], perm=[0, 3, 1, 2]),
            helper.make_node("Relu", ["back"], ["out"]),
        ],
        [("x", [1, 2, 3, 4])],
        [("out", [1, 2, 3, 4]), ("t", [1, 3, 4, 2])],
    )
    new, _, diff = run_pass("cancel-transposes", model)
    assert ops(new) == ["Transpose", "Relu"] and diff == 0
    assert new.graph.node[1].input[0] == "x"
