"""Property tests: every semantics-preserving pass keeps random conv nets valid and exact."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphkit.passes import load_all
from graphkit.pipeline import check_model, load_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt
from tests.graphgen import conv_nets, nets_for

PRESERVING = [
    "cleanup",
    "fold-constants",
    "eliminate-nops",
    "dedupe",
    "fuse-bn",
    "fuse-pad",
    "fuse-conv-affine",
    "matmul-to-gemm",
    "cancel-transposes",
    "rename",
]
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # fixed examples on a developer's machine; new ones on every CI run (a failure prints
    # the seed that reproduces it: pytest --hypothesis-seed=N)
    derandomize=not os.environ.get("CI"),
)


def outputs_of(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    return ort_rt.run(model, feeds)


def assert_close(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for name, ref in before.items():
        got = after[name]
        assert got.shape == ref.shape, name
        tol = 1e-4 + 1e-4 * float(np.max(np.abs(ref)))
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=name)


def apply(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = load_all()[name].func(work)
    return result.model


@pytest.mark.parametrize("pass_name", PRESERVING)
@SETTINGS
@given(data=st.data())
def test_pass_keeps_outputs_and_validity(pass_name, data):
    model = data.draw(nets_for(pass_name))
    feeds = ort_rt.sample_inputs(model, seed=1)
    before = outputs_of(model, feeds)
    new = apply(pass_name, model)
    onnx.checker.check_model(new, full_check=True)
    assert_close(before, outputs_of(new, feeds))
    assert len(new.graph.node) <= len(model.graph.node)


@SETTINGS
@given(model=conv_nets(max_layers=10))
def test_default_pipeline_keeps_outputs_and_never_grows(model):
    feeds = ort_rt.sample_inputs(model, seed=2)
    before = outputs_of(model, feeds)
    pipe = load_pipeline("examples/passes/default.yaml")
    new, _reports = run_pipeline(model, pipe, verify=False)
    check_model(new, "default pipeline")
    onnx.checker.check_model(new, full_check=True)
    assert_close(before, outputs_of(new, feeds))
    assert len(new.graph.node) <= len(model.graph.node)
    assert [o.name for o in new.graph.output] == [o.name for o in model.graph.output]


@SETTINGS
@given(model=conv_nets())
def test_simplify_wrapper_keeps_outputs(model):
    feeds = ort_rt.sample_inputs(model, seed=3)
    before = outputs_of(model, feeds)
    new = apply("simplify", model)
    onnx.checker.check_model(new)
    assert_close(before, outputs_of(new, feeds))
