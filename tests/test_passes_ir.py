"""Passes run on onnx_ir: the IR is the contract, protobuf callers are converted at the
edge, and the shared helpers in graphkit.irgraph keep names, types and scalars right."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphkit import irgraph
from graphkit.passes.base import get_pass
from graphkit.pipeline import parse_pipeline, run_pipeline
from graphkit.runtime.ort import make_session
from tests.tiny import model_of


def _identity_chain() -> onnx.ModelProto:
    """x -> Relu -> Identity -> y, with an unused weight."""
    return model_of(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Identity", ["r"], ["y"], name="id"),
        ],
        [("x", [1, 4])],
        [("y", [1, 4])],
        {"unused": np.ones(3, np.float32)},
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


def test_a_pass_given_an_onnx_ir_model_edits_and_returns_the_ir():
    model = ir.from_proto(_identity_chain())
    result = get_pass("cleanup").func(model)
    assert isinstance(result.model, ir.Model)
    assert [n.op_type for n in result.model.graph] == ["Relu"]
    assert "unused" not in result.model.graph.initializers


def test_a_pass_given_a_protobuf_returns_a_protobuf_and_leaves_the_input_alone():
    proto = _identity_chain()
    before = proto.SerializeToString()
    result = get_pass("cleanup").func(proto)
    assert isinstance(result.model, onnx.ModelProto)
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]
    assert proto.SerializeToString() == before


def test_run_pipeline_on_an_onnx_ir_model_returns_one_with_the_same_outputs():
    proto = _identity_chain()
    pipeline = parse_pipeline(["cleanup", "eliminate-nops"])
    result, reports = run_pipeline(ir.from_proto(proto), pipeline)
    assert isinstance(result, ir.Model)
    assert [r.name for r in reports] == ["cleanup", "eliminate-nops"]
    x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(_run(ir.to_proto(result), x), _run(proto, x))


def test_an_unverified_pipeline_never_edits_the_callers_model():
    proto = _identity_chain()
    before = proto.SerializeToString()
    pipeline = parse_pipeline(["cleanup", "eliminate-nops", "cleanup"])
    result, _ = run_pipeline(proto, pipeline, verify=False)
    assert len(result.graph.node) == 1
    assert proto.SerializeToString() == before


def test_bypass_keeps_a_graph_outputs_name_and_declared_type():
    model = ir.from_proto(_identity_chain())
    g = model.graph
    identity = next(n for n in g if n.op_type == "Identity")
    relu_out = identity.inputs[0]
    assert relu_out is not None
    relu_out.type, relu_out.shape = None, None  # what a pass may leave on a new value
    assert irgraph.bypass(g, identity.outputs[0], relu_out)
    irgraph.remove_nodes(g, [identity])
    assert g.outputs[0] is relu_out and relu_out.name == "y"
    assert relu_out.dtype == ir.DataType.FLOAT and list(relu_out.shape or []) == [1, 4]
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_bypass_refuses_to_rename_a_graph_input_into_an_output():
    model = ir.from_proto(
        model_of([helper.make_node("Identity", ["x"], ["y"])], [("x", [2])], [("y", [2])])
    )
    g = model.graph
    assert not irgraph.bypass(g, g.outputs[0], g.inputs[0])
    assert g.outputs[0].name == "y"


def test_reads_include_values_captured_by_subgraphs():
    then = helper.make_graph([helper.make_node("Relu", ["outer"], ["t"])], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e")])
    model = ir.from_proto(
        model_of(
            [
                helper.make_node("Sigmoid", ["x"], ["outer"], name="sig"),
                helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                helper.make_node("Cast", ["m"], ["c"], to=TensorProto.BOOL),
                helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
            ],
            [("x", [4])],
            [("y", [4])],
        )
    )
    node_if = next(n for n in model.graph if n.op_type == "If")
    names = {v.name for v in irgraph.reads(node_if)}
    assert names == {"c", "outer", "x"}
    sigmoid = next(n for n in model.graph if n.op_type == "Sigmoid")
    assert sigmoid in irgraph.ancestors(model.graph.outputs)


def test_as_tensor_keeps_scalars_zero_dimensional_and_encodes_strings():
    scalar = irgraph.as_tensor(np.float32(2.5), "s")
    assert tuple(scalar.shape) == () and scalar.numpy() == np.float32(2.5)
    words = irgraph.as_tensor(np.array(["a", "bc"]), "w")
    assert words.dtype == ir.DataType.STRING


def test_skeleton_carries_big_weights_as_typed_inputs_only():
    big = np.ones((16, 16), np.float32)
    model = ir.from_proto(
        model_of(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [("x", [1, 16])],
            [("y", [1, 16])],
            {"w": big},
        )
    )
    light = irgraph.skeleton(model)
    assert not light.graph.initializer
    assert "w" in {i.name for i in light.graph.input}
    inferred = onnx.shape_inference.infer_shapes(light)
    assert inferred.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 16
    assert irgraph.value_shapes(model)["y"] == [1, 16]


def _vi(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [4])


def test_an_unverified_pipeline_names_the_pass_that_broke_the_model(monkeypatch):
    from graphkit.errors import GraphkitError
    from graphkit.passes import base

    def break_graph(model: ir.Model) -> base.PassResult:
        """Points the graph output at a tensor nothing writes."""
        relu = next(n for n in model.graph if n.op_type == "Relu")
        relu.outputs[0].name = "r"
        model.graph.outputs[0] = ir.Value(name="nowhere", type=ir.TensorType(ir.DataType.FLOAT))
        return base.PassResult(model, True, ["broke it"])

    def run(model, **_):  # protobuf in, protobuf out, as registered passes do
        return break_graph(model if isinstance(model, ir.Model) else ir.from_proto(model))

    base.load_all()
    info = base.PassInfo("break-graph", run, False, {})
    monkeypatch.setitem(base.REGISTRY, "break-graph", info)
    pipeline = parse_pipeline(["cleanup", "break-graph", "eliminate-nops"])
    proto = _identity_chain()
    with pytest.raises(GraphkitError, match="pass 'break-graph' produced an invalid model"):
        run_pipeline(proto, pipeline, verify=False)


def test_the_pass_written_in_docs_passes_md_runs_as_written(monkeypatch):
    from pathlib import Path

    from graphkit.passes import base

    doc = (Path(__file__).resolve().parents[1] / "docs" / "passes.md").read_text()
    section = doc[doc.index("## Writing a pass") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    base.load_all()
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))  # the example registers
    namespace: dict = {}
    exec(compile(code, "docs/passes.md", "exec"), namespace)  # noqa: S102 - the doc example
    model = model_of(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [("x", [1, 4])],
        [("y", [1, 4])],
    )
    result, reports = run_pipeline(model, parse_pipeline(["drop-double-relu"]))
    assert [n.op_type for n in result.graph.node] == ["Relu"]
    assert result.graph.output[0].name == "y"
    assert reports[0].notes == ["removed 1 Relu"]
