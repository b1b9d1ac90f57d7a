"""Weights left on disk: a big model's external tensors are read only when a pass needs them.

A model loaded with `load_model(path, lazy=True)` keeps each external initializer as a
header (name, type, shape) whose `location` is rewritten to the absolute path of its data
file. Nothing else changes in the protobuf, so copying the model for a rollback, checking
it or running it in onnxruntime (which memory-maps the file) costs almost nothing, and
`save_model` copies the bytes from file to file. In onnx_ir (what passes edit) such a
header becomes an `ir.ExternalTensor`, read only when a pass asks for its values
(`irgraph.const_array`, `tensor_digest` streams it). Code holding the protobuf calls
`tensor_array`, never `numpy_helper.to_array`, which refuses absolute locations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from graphkit.errors import ModelError

CHUNK = 64 * 2**20
# tensors this small are read at load time (irgraph.skeleton keeps them for inference)
INLINE_ELEMENTS = 64
# element types whose external bytes are a plain little-endian numpy array
_PLAIN = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    TensorProto.UINT32,
    TensorProto.INT64,
    TensorProto.UINT64,
    TensorProto.BOOL,
}


def external_fields(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_lazy(t: TensorProto) -> bool:
    """An external tensor whose location is an absolute path (set by `attach`)."""
    return t.data_location == TensorProto.EXTERNAL and os.path.isabs(
        external_fields(t).get("location", "")
    )


def lazy_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if is_lazy(t)]


def attach(model: onnx.ModelProto, base_dir: Path) -> None:
    """Point every external initializer at its data file by absolute path, after checking
    that the file holds the bytes the header promises (else one ModelError sentence)."""
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        fields = external_fields(t)
        rel = fields.get("location", "")
        path = (base_dir / rel).resolve()
        if not rel or os.path.isabs(rel) or not path.is_relative_to(base_dir.resolve()):
            raise ModelError(
                f"tensor '{t.name}' points outside the model's folder ({rel!r}); refusing to "
                "read it"
            )
        if not path.is_file():
            raise ModelError(f"tensor '{t.name}' refers to external data that is missing ({path})")
        offset, length = _span(t, fields)
        if offset + length > path.stat().st_size:
            raise ModelError(
                f"external data {path} is truncated: tensor '{t.name}' needs bytes "
                f"{offset}..{offset + length}, the file has {path.stat().st_size}"
            )
        _set_location(t, str(path))
        if int(np.prod(t.dims, dtype=np.int64)) <= INLINE_ELEMENTS:
            _read_in(t)  # shape vectors and axes: shape inference reads them
    for node in model.graph.node:  # rare: tensors in attributes are read now, they are small
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_location == TensorProto.EXTERNAL:
                onnx.external_data_helper.load_external_data_for_tensor(attr.t, str(base_dir))


def _span(t: TensorProto, fields: dict[str, str] | None = None) -> tuple[int, int]:
    fields = fields if fields is not None else external_fields(t)
    offset = int(fields.get("offset", 0))
    if "length" in fields:
        return offset, int(fields["length"])
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return offset, int(np.prod(t.dims, dtype=np.int64)) * itemsize


def _set_location(t: TensorProto, location: str, offset: int | None = None) -> None:
    fields = external_fields(t)
    fields["location"] = location
    if offset is not None:
        fields["offset"] = str(offset)
    del t.external_data[:]
    for key, value in fields.items():
        t.external_data.add(key=key, value=value)


def chunks(t: TensorProto) -> Iterator[bytes]:
    """The tensor's raw bytes, in pieces of at most CHUNK (constant memory)."""
    if not is_lazy(t):
        yield t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        return
    offset, length = _span(t)
    yield from file_chunks(external_fields(t)["location"], offset, length, t.name)


def file_chunks(path: str | os.PathLike, offset: int, length: int, name: str) -> Iterator[bytes]:
    """`length` bytes of a data file from `offset`, in pieces of at most CHUNK."""
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            piece = f.read(min(CHUNK, length))
            if not piece:
                raise ModelError(f"external data of tensor '{name}' ended early")
            length -= len(piece)
            yield piece


def tensor_array(t: TensorProto) -> np.ndarray:
    """The tensor's values as numpy, read from disk when it is lazy."""
    if not is_lazy(t):
        return numpy_helper.to_array(t)
    if t.data_type in _PLAIN:  # one read straight into the array
        offset, _ = _span(t)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        count = int(np.prod(t.dims, dtype=np.int64))
        values = np.fromfile(external_fields(t)["location"], dtype, count, offset=offset)
        if values.size != count:
            raise ModelError(f"external data of tensor '{t.name}' ended early")
        return values.reshape(tuple(t.dims))
    inline = TensorProto()  # packed and exotic types: let onnx decode them
    inline.CopyFrom(t)
    inline.data_location = TensorProto.DEFAULT
    del inline.external_data[:]
    inline.raw_data = b"".join(chunks(t))
    return numpy_helper.to_array(inline)


def materialize(model: onnx.ModelProto) -> None:
    """Read every lazy tensor into the model, for code that only takes whole protobufs."""
    for t in lazy_tensors(model):
        _read_in(t)


def _read_in(t: TensorProto) -> None:
    data = b"".join(chunks(t))
    t.ClearField("data_location")
    del t.external_data[:]
    t.raw_data = data


def relative_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Path] | None:
    """A copy whose lazy tensors name their file relative to one folder (returned), as
    onnxruntime wants it; None when they live in several folders."""
    folders = {Path(external_fields(t)["location"]).parent for t in lazy_tensors(model)}
    if len(folders) != 1:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if is_lazy(t):
            _set_location(t, Path(external_fields(t)["location"]).name)
    return copy, folders.pop()


def _goes_out(t: TensorProto, threshold: int) -> bool:
    if is_lazy(t):
        return True
    if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
        return False
    return t.ByteSize() >= threshold


def write_external(
    model: onnx.ModelProto, model_path: Path, data_path: Path, threshold: int
) -> None:
    """Save `model` to `model_path` with every tensor of `threshold` bytes or more in
    `data_path` (lazy ones copied file to file, page-aligned), the caller's model untouched."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    with open(data_path, "wb") as data:
        for t in out.graph.initializer:
            if not _goes_out(t, threshold):
                continue
            pad = -data.tell() % 4096
            data.write(b"\0" * pad)
            offset = data.tell()
            data.writelines(chunks(t))
            length = data.tell() - offset
            t.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value=data_path.name)
            t.external_data.add(key="offset", value=str(offset))
            t.external_data.add(key="length", value=str(length))
    with open(model_path, "wb") as f:
        f.write(out.SerializeToString())
