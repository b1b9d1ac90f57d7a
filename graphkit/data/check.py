"""Does a spec feed this model? Checked before any image is read or anything is written."""

from __future__ import annotations

import numpy as np
import onnx

from graphkit.data.samples import expected_shape, iter_samples
from graphkit.data.spec import InputSpec
from graphkit.errors import GraphkitError
from graphkit.runtime.ort import ONNX_TO_NUMPY, graph_input_names


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in vi.type.tensor_type.shape.dim
    ]


def _fmt(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def _matches(dims: list[int | None], shape: tuple[int | None, ...]) -> bool:
    return len(dims) == len(shape) and all(
        d is None or s is None or d == s for d, s in zip(dims, shape)
    )


def check_against_model(spec: InputSpec, model: onnx.ModelProto) -> None:
    """Raise one GraphkitError sentence when the spec's tensors cannot feed `model`:
    unknown input name, other dtype, other size, or NHWC/NCHW swapped."""
    cfg = spec.input
    names = graph_input_names(model)
    if cfg.name not in names:
        raise GraphkitError(
            f"input.name {cfg.name!r} is not an input of the model (its inputs: {', '.join(names)})"
        )
    vi = next(v for v in model.graph.input if v.name == cfg.name)
    elem = vi.type.tensor_type.elem_type
    model_dtype = ONNX_TO_NUMPY.get(elem)
    model_dtype_name = (
        np.dtype(model_dtype).name if model_dtype else onnx.TensorProto.DataType.Name(elem)
    )
    if model_dtype_name != cfg.dtype:
        raise GraphkitError(
            f"model input {cfg.name!r} takes {model_dtype_name} but the spec's input.dtype is {cfg.dtype}"
        )
    dims = _dims(vi)
    want = expected_shape(cfg, spec.source.resize)
    if spec.source.resize == "short-side" and len(dims) == 4:
        hw = dims[1:3] if cfg.layout == "NHWC" else dims[2:4]
        if any(d is not None for d in hw):
            raise GraphkitError(
                f"model input {cfg.name!r} has a fixed size ({_fmt(dims)}) but short-side "
                "resizing gives every image its own size: export the model with free H and W, "
                "or use source.resize: letterbox"
            )
    if spec.source.type in ("npy", "npz"):
        first = next(iter_samples(spec), None)
        if first is not None:
            want = first.feeds[cfg.name].shape
    if want is None or _matches(dims, want):
        return
    if len(dims) == 4 and len(want) == 4:
        swapped = (
            (want[0], want[3], want[1], want[2])
            if cfg.layout == "NHWC"
            else (want[0], want[2], want[3], want[1])
        )
        if _matches(dims, swapped):
            other = "NCHW" if cfg.layout == "NHWC" else "NHWC"
            raise GraphkitError(
                f"model input {cfg.name!r} is {other} ({_fmt(dims)}) but the spec's input.layout is {cfg.layout}"
            )
    raise GraphkitError(
        f"model input {cfg.name!r} has shape {_fmt(dims)} but the spec makes {_fmt(want)} "
        f"(input.size {list(cfg.size) if cfg.size else None}, layout {cfg.layout})"
    )
