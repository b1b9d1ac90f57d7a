"""cleanup, dedupe, eliminate-nops, fold-constants: what they remove and what they must keep."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphkit.passes import load_all
from tests.passhelpers import make, ops, run_pass, w


def test_identity_feeding_a_graph_output_goes_and_the_output_keeps_its_name():
    model = make(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Identity", ["r"], ["out"]),
            helper.make_node("Dropout", ["r"], ["d"]),
            helper.make_node("Sigmoid", ["d"], ["out2"]),
        ],
        [("x", [1, 4])],
        [("out", [1, 4]), ("out2", [1, 4])],
    )
    new, _result, diff = run_pass("cleanup", model)
    assert ops(new) == ["Relu", "Sigmoid"] and diff == 0
    assert [o.name for o in new.graph.output] == ["out", "out2"]
    assert new.graph.node[0].output[0] == "out" and new.graph.node[1].input[0] == "out"


def test_identity_between_input_and_output_or_two_outputs_is_kept():
    model = make(
        [
            helper.make_node("Identity", ["x"], ["out"]),
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Identity", ["r"], ["out2"]),
        ],
        [("x", [1, 4])],
        [("out", [1, 4]), ("out2", [1, 4]), ("r", [1, 4])],
    )
    new, _, diff = run_pass("cleanup", model)
    assert ops(new) == ["Identity", "Relu", "Identity"] and diff == 0


def test_dropout_whose_mask_is_used_is_kept():
    model = make(
        [
            helper.make_node("Dropout", ["x"], ["y", "mask"]),
            helper.make_node("Cast", ["mask"], ["m"], to=1),
        ],
        [("x", [1, 4])],
        [("y", [1, 4]), ("m", [1, 4])],
    )
    new, _, _ = run_pass("cleanup", model)
    assert "Dropout" in ops(new)


def test_dead_nodes_unused_weights_and_inputs_go_and_nodes_are_sorted():
    model = make(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Add", ["r", "B"], ["out"]),
            helper.make_node("Sigmoid", ["x"], ["dead"]),
        ],
        [("x", [1, 4]), ("unused", [1])],
        [("out", [1, 4])],
        {"B": w(4), "C": w(4)},
    )
    relu = onnx.NodeProto()
    relu.CopyFrom(model.graph.node[0])
    del model.graph.node[0]
    model.graph.node.append(relu)  # now out of order: Add reads r before Relu writes it
    result = load_all()["cleanup"].func(_copy(model))
    new, result_notes = result.model, " ".join(result.notes)
    onnx.checker.check_model(new)
    assert ops(new) == ["Relu", "Add"]
    assert [i.name for i in new.graph.initializer] == ["B"]
    assert [i.name for i in new.graph.input] == ["x"]
    for what in ("dead node", "unused initializer", "unused input", "sorted"):
        assert what in result_notes


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(model)
    return c


def test_initializers_listed_as_inputs_are_detached_so_they_count_as_constants():
    model = make(
        [
            helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[1, 1]),
            helper.make_node("Mul", ["y", "S"], ["z"]),
        ],
        [("x", [1, 2, 3, 3]), ("W", [3, 2, 1, 1])],
        [("z", [1, 3, 3, 3])],
        {"W": w(3, 2, 1, 1), "S": w(3, 1, 1)},
    )
    new, _, _ = run_pass("cleanup", model)
    assert [i.name for i in new.graph.input] == ["x"]


def test_dedupe_merges_equal_constants_and_equal_nodes():
    model = make(
        [
            helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1, 1]),
            helper.make_node("Conv", ["x", "W2"], ["b"], kernel_shape=[1, 1]),
            helper.make_node("Relu", ["a"], ["ra"]),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("Add", ["ra", "rb"], ["out"]),
        ],
        [("x", [1, 2, 3, 3])],
        [("out", [1, 3, 3, 3])],
        {"W1": np.ones((3, 2, 1, 1), np.float32), "W2": np.ones((3, 2, 1, 1), np.float32)},
    )
    new, _result, diff = run_pass("dedupe", model)
    assert ops(new) == ["Conv", "Relu", "Add"] and diff == 0
    assert new.graph.node[-1].input[0] == new.graph.node[-1].input[1]


def test_eliminate_nops_removes_provable_no_ops_only():
    model = make(
        [
            helper.make_node("Concat", ["x"], ["c"], axis=1),
            helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1]),
            helper.make_node("Cast", ["t"], ["k"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["k", "S"], ["r"]),
            helper.make_node("Add", ["r", "Z"], ["a"]),  # + 0 of the same shape: no-op
            helper.make_node("Mul", ["a", "O"], ["out"]),  # * 1 that broadcasts [2,4] -> [3,2,4]
        ],
        [("x", [2, 4])],
        [("out", [3, 2, 4])],
        {
            "S": np.array([2, 4], np.int64),
            "Z": np.zeros((2, 4), np.float32),
            "O": np.ones((3, 2, 4), np.float32),
        },
    )
    new, _result, diff = run_pass("eliminate-nops", model)
    assert ops(new) == ["Mul"] and diff == 0
    assert new.graph.node[0].input[0] == "x"


def test_eliminate_nops_merges_a_static_reshape_chain():
    model = make(
        [
            helper.make_node("Unsqueeze", ["x", "A"], ["u"]),
            helper.make_node("Unsqueeze", ["u", "A"], ["out"]),
        ],
        [("x", [2, 3])],
        [("out", [1, 1, 2, 3])],
        {"A": np.array([0], np.int64)},
    )
    new, _, diff = run_pass("eliminate-nops", model)
    assert ops(new) == ["Reshape"] and diff == 0


# --- fold-constants / simplify -------------------------------------------------------------------


def test_fold_constants_evaluates_constant_subgraphs_and_static_shapes():
    model = make(
        [
            helper.make_node(
                "Constant",
                [],
                ["c"],
                value=numpy_helper.from_array(np.full((1, 4), 2.0, np.float32)),
            ),
            helper.make_node("Sqrt", ["c"], ["s"]),
            helper.make_node("Mul", ["x", "s"], ["m"]),
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Reshape", ["m", "shape"], ["out"]),
        ],
        [("x", [3, 4])],
        [("out", [3, 4])],
    )
    new, result, diff = run_pass("fold-constants", model)
    assert ops(new) == ["Mul", "Reshape"] and diff == 0
    assert result.notes[0].startswith("folded 3 nodes")


def test_fold_constants_keeps_large_results_that_would_bloat_the_file():
    model = make(
        [
            helper.make_node(
                "ConstantOfShape",
                ["S"],
                ["big"],
                value=numpy_helper.from_array(np.array([1.0], np.float32)),
            ),
            helper.make_node("Add", ["x", "big"], ["out"]),
        ],
        [("x", [512, 1024])],
        [("out", [512, 1024])],
        {"S": np.array([512, 1024], np.int64)},
    )
    new, result, _ = run_pass("fold-constants", model, max_size_mb=1.0)
    assert "ConstantOfShape" in ops(new) and "kept 1 large constant" in " ".join(result.notes)
    new, result, _ = run_pass("fold-constants", model, max_size_mb=4.0)
    assert ops(new) == ["Add"]


def test_fold_constants_leaves_dequantize_nodes_for_int8_backends():
    model = make(
        [
            helper.make_node("DequantizeLinear", ["q", "s"], ["wq"]),
            helper.make_node("MatMul", ["x", "wq"], ["out"]),
        ],
        [("x", [1, 4])],
        [("out", [1, 3])],
        {"q": np.ones((4, 3), np.int8), "s": np.array(0.5, np.float32)},
    )
    new, result, _ = run_pass("fold-constants", model)
    assert not result.changed and ops(new) == ["DequantizeLinear", "MatMul"]


def test_constant_graph_output_stays_an_output():
    model = make(
        [
            helper.make_node("Add", ["A", "A"], ["k"]),
            helper.make_node("Relu", ["x"], ["out"]),
        ],
        [("x", [2])],
        [("out", [2]), ("k", [2])],
        {"A": np.ones(2, np.float32)},
    )
    new, _, diff = run_pass("fold-constants", model)
    assert diff == 0 and [o.name for o in new.graph.output] == ["out", "k"]
