"""fix-shapes and make-dynamic: set the input shapes a backend will see, then re-infer."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import real_inputs, skeleton
from graphkit.passes.base import PassResult, register

Dims = list[int | str | None]


def _dims(value: ir.Value) -> Dims:
    """A value's dims: ints, symbol names, None for unknown ([] when it has no shape)."""
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _set_dims(value: ir.Value, dims: Dims) -> None:
    value.shape = ir.Shape(dims)


def reinfer(model: ir.Model) -> None:
    """Forget every intermediate and output shape and infer them again from the inputs.

    Graph outputs keep their element type and rank; their dims come from inference when it
    can tell them and are left unknown otherwise (a stale static output dim would lie).
    Intermediate values lose type and shape unless inference tells them again.
    """
    g = model.graph
    produced = [v for node in g for v in node.outputs if v.name]
    for value in produced:
        if not value.is_graph_output():
            value.type = None
            value.shape = None
        elif isinstance(value.type, ir.TensorType) and value.shape is not None:
            _set_dims(value, [None] * len(value.shape))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception as exc:  # noqa: BLE001 - shape inference reports bad shapes this way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphkitError(f"shape inference failed with the new shapes: {first}") from None
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for value in produced:
        vi = known.get(value.name or "")
        if vi is None:
            continue
        shape = ir.serde.deserialize_type_proto_for_shape(vi.type)
        if value.is_graph_output():
            if shape is not None:
                value.shape = shape
            if value.type is None:
                value.type = ir.serde.deserialize_type_proto_for_type(vi.type)
        else:
            value.type = ir.serde.deserialize_type_proto_for_type(vi.type)
            value.shape = shape


@register("fix-shapes")
def fix_shapes(
    model: ir.Model,
    *,
    input: list[int] | dict[str, list[int]] | None = None,
    batch: int | None = None,
) -> PassResult:
    """Give graph inputs static shapes, then run shape inference on the whole graph.

    Our own pass (onnxsim's overwrite_input_shapes does the same but also simplifies).
    `input: [1, 3, 256, 256]` sets the shape of the only input; `input: {name: [...]}`
    sets named inputs; `batch: 1` only sets the first dim of every input. Dims the graph
    already fixes must agree, or the pass says which input and dim differ: the model would
    compute something else at another size.
    """
    inputs = real_inputs(model.graph)
    real = [v.name or "" for v in inputs]
    if input is None and batch is None:
        raise GraphkitError("fix-shapes needs 'input' (a shape or {name: shape}) or 'batch'")
    if isinstance(input, list):
        if len(real) != 1:
            raise GraphkitError(
                f"the model has {len(real)} inputs ({', '.join(real)}); give shapes by name"
            )
        input = {real[0]: input}
    wanted: dict[str, list[int]] = dict(input or {})
    for name in wanted:
        if name not in real:
            raise GraphkitError(
                f"the model has no input '{name}'; its inputs are: {', '.join(real)}"
            )
    notes = []
    for name, value in zip(real, inputs):
        old = _dims(value)
        new = list(old)
        if name in wanted:
            shape = wanted[name]
            if any(not isinstance(d, int) or d < 1 for d in shape):
                raise GraphkitError(
                    f"shape for input '{name}' must be positive integers, got {shape}"
                )
            if old and len(shape) != len(old):
                raise GraphkitError(
                    f"input '{name}' has rank {len(old)}, the new shape {shape} has rank {len(shape)}"
                )
            new = list(shape)
        elif batch is not None:
            if not old:
                continue
            new[0] = batch
        for axis, (a, b) in enumerate(zip(old, new)):
            if isinstance(a, int) and a > 0 and a != b:
                raise GraphkitError(
                    f"input '{name}' dim {axis} is fixed to {a} in the model, not {b}"
                )
        if new != old:
            _set_dims(value, new)
            notes.append(f"{name}: {_fmt(old)} -> {_fmt(new)}")
    reinfer(model)
    return PassResult(model, bool(notes), notes)


@register("make-dynamic")
def make_dynamic(
    model: ir.Model,
    *,
    dims: dict[str, list[int]] | None = None,
    batch: bool = False,
) -> PassResult:
    """Mark input dims dynamic (named `<input>_d<axis>`, or `batch`), then re-infer shapes.

    Our own pass, for backends that build shape "gears" or profiles from symbolic dims.
    `dims: {input_name: [0, 2, 3]}` frees those axes; `batch: true` frees axis 0 of every
    input. Constants baked into the graph (a Reshape to [1, -1]) still pin a size; the
    verification runs the model at the old size, so it cannot see that: check with the
    backend at the sizes you need.
    """
    by_name = {v.name or "": v for v in real_inputs(model.graph)}
    real = list(by_name)
    if not dims and not batch:
        raise GraphkitError("make-dynamic needs 'dims' ({input: [axes]}) or 'batch: true'")
    wanted = {name: list(axes) for name, axes in (dims or {}).items()}
    for name in wanted:
        if name not in real:
            raise GraphkitError(
                f"the model has no input '{name}'; its inputs are: {', '.join(real)}"
            )
    if batch:
        for name in real:
            wanted.setdefault(name, [])
            if 0 not in wanted[name]:
                wanted[name].append(0)
    notes = []
    for name, axes in wanted.items():
        value = by_name[name]
        old = _dims(value)
        new = list(old)
        for axis in axes:
            if not -len(old) <= axis < len(old):
                raise GraphkitError(f"input '{name}' has rank {len(old)}, no axis {axis}")
            new[axis] = (
                "batch" if axis % len(old) == 0 and batch else f"{_safe(name)}_d{axis % len(old)}"
            )
        if new != old:
            _set_dims(value, new)
            notes.append(f"{name}: {_fmt(old)} -> {_fmt(new)}")
    reinfer(model)
    return PassResult(model, bool(notes), notes)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _fmt(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
