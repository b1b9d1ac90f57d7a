"""From a plan to the model each backend is given: integers fixed once, weights snapped.

A plan fixes the int8 weights of every quantized layer. Backends differ in what they
take: a Q/DQ model stores integers, ncnn stores integers with its own scales, and
TensorRT (from a cache), AMCT and vamc quantize float weights themselves by per-channel
absmax. `deploy_model` serves them all: each int8 weight becomes exactly q * scale, and
every channel keeps one integer at +-qmax (`pin_extremes`), so absmax / qmax of the
snapped weights is the plan's scale and a backend's own round-to-nearest gives back q.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import add_initializer, n_uses, name_of, set_initializer, to_ir, to_proto

MIN_SCALE = 1e-12

if TYPE_CHECKING:  # the plan imports this module to build its deploy model
    from graphkit.quant.table import QuantPlan, WeightEntry


def channel_scales(entry: WeightEntry, ndim: int) -> np.ndarray:
    """The entry's scales shaped to broadcast against its weight (per channel or tensor)."""
    s = np.maximum(np.asarray(entry.amax, np.float64), MIN_SCALE * entry.qmax) / entry.qmax
    if s.size == 1 or entry.axis < 0:
        return np.asarray(s.max(), np.float64).reshape([1] * ndim)
    shape = [1] * ndim
    shape[entry.axis % ndim] = -1
    return s.reshape(shape)


def nearest_integers(w: np.ndarray, entry: WeightEntry) -> np.ndarray:
    """Round to nearest on the entry's grid, clamped to +-qmax."""
    s = channel_scales(entry, w.ndim)
    return np.clip(np.round(w.astype(np.float64) / s), -entry.qmax, entry.qmax)


def _rows(a: np.ndarray, axis: int | None) -> np.ndarray:
    return a.reshape(1, -1) if axis is None else np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def pin_extremes(
    q: np.ndarray, w: np.ndarray, entry: WeightEntry, near: np.ndarray | None = None
) -> np.ndarray:
    """q with, in every channel where nearest rounding reaches +-qmax, its largest |w|
    element at +-qmax: the channel's absmax then stays amax after snapping (an optimized
    rounding may have pulled that element in by one step)."""
    pins = extreme_pins(w, entry, near)
    return np.where(np.isnan(pins), np.asarray(q, np.float64), pins)


def extreme_pins(w: np.ndarray, entry: WeightEntry, near: np.ndarray | None = None) -> np.ndarray:
    """NaN like `w`, except, in every channel where nearest rounding reaches +-qmax, its
    largest |w| element, which holds that +-qmax. Backends that snap float weights and
    take the scale from their absmax (TensorRT from a cache, AMCT, vamc) find the plan's
    scale only if these integers stay; `refine` rounds the other elements around them."""
    if w.ndim == 0:
        return np.full(w.shape, np.nan)
    axis = entry.axis % w.ndim if entry.axis >= 0 and len(entry.amax) > 1 else None
    near = _rows(nearest_integers(w, entry) if near is None else near, axis)
    idx = np.argmax(np.abs(_rows(w, axis)), axis=1)
    rows = np.arange(idx.size)
    hit = np.abs(near[rows, idx]) == entry.qmax
    pins = np.full(near.shape, np.nan)
    pins[rows[hit], idx[hit]] = near[rows[hit], idx[hit]]
    if axis is None:
        return pins.reshape(w.shape)
    return np.moveaxis(pins.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)


def fill_integers(
    plan: QuantPlan,
    model: onnx.ModelProto,
    rounded: onnx.ModelProto | None = None,
    rounding: str = "gptq",
) -> None:
    """Store the final integers of every weight entry: taken from `rounded` (weights already
    on the plan's grid) where given, nearest rounding of `model` otherwise."""
    inits = to_ir(model).graph.initializers
    mine = to_ir(rounded).graph.initializers if rounded is not None else {}
    for name, entry in plan.weights.items():
        if name not in inits or inits[name].const_value is None:
            raise GraphkitError(f"the plan's weight '{name}' is not an initializer of the model")
        w = _array(inits[name]).astype(np.float64)
        if not entry.shape:
            entry.shape = list(w.shape)
        how = "nearest"
        q = near = nearest_integers(w, entry)
        if name in mine:
            r = _array(mine[name]).astype(np.float64)
            if not np.array_equal(r, w):
                q = np.clip(np.round(r / channel_scales(entry, w.ndim)), -entry.qmax, entry.qmax)
                how = rounding
        entry.set_integers(pin_extremes(q, w, entry, near), how)


def _array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None
    return value.const_value.numpy()


def deploy_model(plan: QuantPlan, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with the plan's equalization, weights (q * scale) and biases in
    place."""
    plan.check_model(model)
    out = to_ir(equalized(plan, model))
    inits = out.graph.initializers
    for name, entry in plan.weights.items():
        q = entry.integers()
        if q is None:
            continue
        tensor = inits[name].const_value if name in inits else None
        if tensor is None or list(tensor.shape) != list(q.shape):
            raise GraphkitError(
                f"the plan's weight '{name}' does not match the model (missing or other shape)"
            )
        dtype = tensor.dtype.numpy()
        set_initializer(
            inits[name], (q.astype(np.float64) * channel_scales(entry, q.ndim)).astype(dtype)
        )
    if plan.biases:
        _set_biases(out.graph, plan.biases)
    return to_proto(out)


def equalized(plan: QuantPlan, model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the plan's equalized pairs rescaled (itself when there are none)."""
    if not plan.equalization:
        return model
    from graphkit.quant.equalize import apply_equalization

    return apply_equalization(model, [asdict(e) for e in plan.equalization])


def with_biases(model: onnx.ModelProto, biases: dict[str, list[float]]) -> onnx.ModelProto:
    """A copy of `model` with these Conv biases in place (as `deploy_model` sets them)."""
    out = to_ir(model)
    _set_biases(out.graph, biases)
    return to_proto(out)


def _set_biases(graph: ir.Graph, biases: dict[str, list[float]]) -> None:
    """Give each named Conv the plan's bias: in place when its bias initializer is its own,
    as a new initializer when it is shared (tf2onnx shares them) or absent."""
    nodes = {n.name: n for n in graph}
    taken = set(graph.initializers) | {name_of(v) for n in graph for v in n.outputs}
    # read before any edit: a bias shared by two Convs is copied for both
    own = {v for v in graph.initializers.values() if n_uses(v) == 1}
    for name, values in biases.items():
        node = nodes.get(name)
        if node is None:
            raise GraphkitError(
                f"the plan sets the bias of '{name}', which is not a node of the model"
            )
        b = np.asarray(values, np.float32)
        old = node.inputs[2] if len(node.inputs) >= 3 else None
        if old is not None and old in own:
            if list(_array(old).shape) != [b.size]:
                raise GraphkitError(
                    f"the plan's bias of '{name}' has {b.size} values, the model's not"
                )
            set_initializer(old, b)
            continue
        new, i = f"{name}_plan_bias", 1
        while new in taken:
            new, i = f"{name}_plan_bias_{i}", i + 1
        taken.add(new)
        value = add_initializer(graph, b, new)
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, value)


__all__ = [
    "channel_scales",
    "deploy_model",
    "fill_integers",
    "nearest_integers",
    "pin_extremes",
    "with_biases",
]
