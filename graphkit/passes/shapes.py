"""fix-shapes and make-dynamic: set the input shapes a backend will see, then re-infer."""

from __future__ import annotations

import onnx

from graphkit.errors import GraphkitError
from graphkit.graph import drop_stale_value_info
from graphkit.passes.base import PassResult, register
from graphkit.runtime.ort import graph_input_names


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int | str | None]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def reinfer(model: onnx.ModelProto) -> None:
    """Forget every intermediate and output shape and infer them again from the inputs.

    Graph outputs keep their element type and rank; their dims come from inference when it
    can tell them and are left unknown otherwise (a stale static output dim would lie).
    """
    g = model.graph
    del g.value_info[:]
    for out in g.output:
        if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
            _set_dims(out, [None] * len(out.type.tensor_type.shape.dim))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - shape inference reports bad shapes this way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphkitError(f"shape inference failed with the new shapes: {first}") from None
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in g.output:
        vi = known.get(out.name)
        if vi is not None and vi.type.tensor_type.HasField("shape"):
            _set_dims(out, _dims(vi))
    g.value_info.extend(inferred.graph.value_info)
    drop_stale_value_info(g)


@register("fix-shapes")
def fix_shapes(
    model: onnx.ModelProto,
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
    g = model.graph
    real = graph_input_names(model)
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
    by_name = {vi.name: vi for vi in g.input}
    for name in real:
        vi = by_name[name]
        old = _dims(vi)
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
            _set_dims(vi, new)
            notes.append(f"{name}: {_fmt(old)} -> {_fmt(new)}")
    reinfer(model)
    return PassResult(model, bool(notes), notes)


@register("make-dynamic")
def make_dynamic(
    model: onnx.ModelProto,
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
    g = model.graph
    real = graph_input_names(model)
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
    by_name = {vi.name: vi for vi in g.input}
    for name, axes in wanted.items():
        vi = by_name[name]
        old = _dims(vi)
        new = list(old)
        for axis in axes:
            if not -len(old) <= axis < len(old):
                raise GraphkitError(f"input '{name}' has rank {len(old)}, no axis {axis}")
            new[axis] = (
                "batch" if axis % len(old) == 0 and batch else f"{_safe(name)}_d{axis % len(old)}"
            )
        if new != old:
            _set_dims(vi, new)
            notes.append(f"{name}: {_fmt(old)} -> {_fmt(new)}")
    reinfer(model)
    return PassResult(model, bool(notes), notes)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _fmt(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
