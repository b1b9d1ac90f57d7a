"""Small model builders shared by the pass tests."""

from __future__ import annotations

import numpy as np
import onnx
from tiny import model_of

from graphkit.passes import load_all
from graphkit.runtime import ort as ort_rt

RNG = np.random.default_rng(0)


def make(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    return model_of(nodes, inputs, outputs, dict(inits), opset=opset, name="t")


def w(*shape, lo=None):
    if lo is not None:
        return RNG.uniform(lo, lo + 1, shape).astype(np.float32)
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def run_pass(name: str, model: onnx.ModelProto, **opts):
    """Apply a pass; return (new model, result, max abs output difference)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = load_all()[name].func(work, **opts)
    onnx.checker.check_model(result.model, full_check=True)
    feeds = ort_rt.sample_inputs(model, seed=3)
    a, b = ort_rt.run(model, feeds), ort_rt.run(result.model, feeds)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    return result.model, result, diff


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]
