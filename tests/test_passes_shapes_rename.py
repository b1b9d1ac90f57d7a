"""fix-shapes, make-dynamic, rename, simplify: interface edits, their errors, and verification."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphkit.errors import GraphkitError
from graphkit.passes import load_all
from graphkit.pipeline import parse_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt
from tests.passhelpers import make, ops, run_pass, w


def conv_model(shape=("N", 3, "H", "W")) -> onnx.ModelProto:
    return make(
        [
            helper.make_node(
                "Conv", ["image:0", "W"], ["net/conv:0"], kernel_shape=[3, 3], pads=[1] * 4
            ),
            helper.make_node("Relu", ["net/conv:0"], ["out/heat:0"]),
        ],
        [("image:0", list(shape))],
        [("out/heat:0", ["N", 4, "H", "W"])],
        {"W": w(4, 3, 3, 3)},
    )


def dims(vi) -> list:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in vi.type.tensor_type.shape.dim
    ]


def test_fix_shapes_sets_static_input_and_infers_the_output():
    model = conv_model()
    new = load_all()["fix-shapes"].func(model, input=[1, 3, 32, 24]).model
    assert dims(new.graph.input[0]) == [1, 3, 32, 24]
    assert dims(new.graph.output[0]) == [1, 4, 32, 24]


def test_fix_shapes_batch_only_keeps_other_dynamic_dims():
    new = load_all()["fix-shapes"].func(conv_model(), batch=1).model
    assert dims(new.graph.input[0]) == [1, 3, "H", "W"]


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"input": [1, 3, 32]}, "rank 4"),
        ({"input": {"nope": [1, 3, 4, 4]}}, "no input 'nope'"),
        ({"input": [1, 5, 32, 32]}, "dim 1 is fixed to 3"),
        ({}, "needs 'input'"),
    ],
)
def test_fix_shapes_refuses_wrong_shapes_with_one_sentence(opts, message):
    with pytest.raises(GraphkitError, match=message):
        load_all()["fix-shapes"].func(conv_model(), **opts)


def test_make_dynamic_frees_named_axes_and_the_model_runs_at_another_size():
    model = conv_model(shape=(1, 3, 8, 8))
    new = load_all()["make-dynamic"].func(model, dims={"image:0": [0, 2, 3]}).model
    assert dims(new.graph.input[0]) == ["image_0_d0", 3, "image_0_d2", "image_0_d3"]
    out = ort_rt.run(new, {"image:0": np.zeros((2, 3, 5, 7), np.float32)})
    assert out["out/heat:0"].shape == (2, 4, 5, 7)


def test_rename_removes_bad_characters_and_keeps_io_by_default():
    model = conv_model(shape=(1, 3, 8, 8))
    new, _result, diff = run_pass("rename", model)
    names = {n for node in new.graph.node for n in list(node.input) + list(node.output)}
    inner = names - {"image:0", "out/heat:0"}
    assert inner and all(":" not in n and "/" not in n for n in inner)
    assert [i.name for i in new.graph.input] == ["image:0"] and diff == 0


def test_rename_of_io_is_verified_through_the_name_map():
    model = conv_model(shape=(1, 3, 8, 8))
    pipe = parse_pipeline([{"rename": {"keep_io": False, "replacement": "."}}])
    new, reports = run_pipeline(model, pipe, verify=True)
    assert [i.name for i in new.graph.input] == ["image.0"]
    assert [o.name for o in new.graph.output] == ["out.heat.0"]
    assert reports[0].max_abs_diff == {"out.heat.0": 0.0}


def test_rename_keeps_names_unique_when_cleaned_names_collide():
    model = make(
        [
            helper.make_node("Relu", ["x"], ["a:0"]),
            helper.make_node("Relu", ["a:0"], ["a_0"]),
            helper.make_node("Add", ["a:0", "a_0"], ["y"]),
        ],
        [("x", [2])],
        [("y", [2])],
    )
    new, _, diff = run_pass("rename", model)
    outs = [n.output[0] for n in new.graph.node]
    assert len(set(outs)) == 3 and diff == 0


def test_simplify_wraps_onnxsim_and_can_keep_batchnorm():
    model = make(
        [
            helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[1, 1]),
            helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"]),
        ],
        [("x", [1, 2, 4, 4])],
        [("z", [1, 3, 4, 4])],
        {"W": w(3, 2, 1, 1), "g": w(3, lo=0.5), "b": w(3), "m": w(3), "v": w(3, lo=0.5)},
    )
    new, _, diff = run_pass("simplify", model)
    assert ops(new) == ["Conv"] and diff < 1e-4
    new, _, _ = run_pass("simplify", model, skip_fuse_bn=True)
    assert "BatchNormalization" in ops(new)


def test_every_pass_documents_itself_and_says_what_it_wraps():
    for name, info in load_all().items():
        if name in ("strip-flip-test", "select-outputs", "extract"):
            continue
        assert info.summary.strip(), name
        assert ("Our own" in info.doc) or ("onnxsim" in info.doc), name


def test_model_with_int_input_is_verified_with_int_samples():
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
                helper.make_node("Identity", ["f"], ["out"]),
            ],
            "t",
            [helper.make_tensor_value_info("img", TensorProto.INT32, [1, 4, 4, 3])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    new, reports = run_pipeline(model, parse_pipeline(["cleanup"]), verify=True)
    assert ops(new) == ["Cast"] and reports[0].max_abs_diff == {"out": 0.0}


def test_fix_shapes_is_verified_on_inputs_of_the_new_static_size():
    model = conv_model()  # dynamic N, H, W
    pipe = parse_pipeline([{"fix-shapes": {"input": [1, 3, 16, 12]}}, "cleanup"])
    new, reports = run_pipeline(model, pipe, verify=True)
    assert reports[0].max_abs_diff == {"out/heat:0": 0.0}
    assert dims(new.graph.output[0]) == [1, 4, 16, 12]
