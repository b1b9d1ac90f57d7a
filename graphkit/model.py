"""Load and save ONNX models safely.

Loading turns every way a file can be wrong (missing, not ONNX, truncated, external data
missing) into one GraphkitError sentence. Saving is atomic (temporary file, then rename)
and switches to external data when the model would pass protobuf's 2 GB limit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from graphkit import scratch, weights
from graphkit.errors import GraphkitError, ModelError

PROTOBUF_LIMIT = 2**31 - 1
# Leave headroom: the serialized size is not exactly the sum of the tensors.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(
    path: str | os.PathLike, load_external_data: bool = True, lazy: bool = False
) -> onnx.ModelProto:
    """Read an ONNX model, or raise GraphkitError with one sentence saying why it cannot be.

    lazy=True leaves external weights on disk (`graphkit.weights`): a 2 GB model costs a
    few kilobytes until a pass reads a tensor, and saving copies the bytes file to file.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist")
    if p.is_dir():
        raise ModelError(f"{p} is a directory, not an ONNX model file")
    if not p.is_file():  # a FIFO or device would block or stream forever
        raise ModelError(f"{p} is not a regular file")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data and not lazy)
    except FileNotFoundError as exc:
        raise GraphkitError(
            f"{p} refers to external data that is missing ({exc.filename})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise GraphkitError(
            f"{p} is not a readable ONNX model (the file is truncated or not ONNX: "
            f"{type(exc).__name__})"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} is not an ONNX model (no graph found in it)")
    if model.ir_version == 0:
        raise ModelError(f"{p} is not an ONNX model (no IR version in it)")
    dangling = unproduced_inputs(model)
    if dangling:
        tensor, node = dangling[0]
        raise ModelError(
            f"{p} is not a valid model: node '{node}' reads '{tensor}', which no node, "
            "weight or graph input provides (a missing initializer?)"
        )
    if lazy:
        weights.attach(model, p.parent)
    return model


def unproduced_inputs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor, node) pairs where a top-level node reads a name nothing defines (in any
    order: `cleanup` sorts graphs that are not topologically sorted)."""
    g = model.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    known |= {t.values.name for t in g.sparse_initializer}
    known |= {o for node in g.node for o in node.output}
    return [(t, node.name or node.op_type) for node in g.node for t in node.input if t not in known]


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Size of the model if serialized in one piece, counting tensors kept outside.

    Summed per tensor and per node: protobuf's own ByteSize() fails on messages over 2 GB,
    which are exactly the ones this is asked about.
    """
    g = model.graph
    total = sum(init.ByteSize() for init in g.initializer)
    total += sum(node.ByteSize() for node in g.node)
    total += sum(vi.ByteSize() for vi in list(g.input) + list(g.output) + list(g.value_info))
    return total + sum(f.ByteSize() for f in model.functions)


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    ir_version: int | None = None,
) -> Path:
    """Write a model atomically; large models get their weights in `<name>.data` beside it.

    external_data=None decides by size. ir_version lowers the IR for consumers that refuse
    new ones (pnnx reads IR <= 13).
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise GraphkitError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GraphkitError(f"output directory {parent} is not writable")
    if ir_version is not None and model.ir_version > ir_version:
        model = (
            onnx.ModelProto.FromString(model.SerializeToString())
            if model_size_bytes(model) < PROTOBUF_LIMIT
            else model
        )
        model.ir_version = ir_version
    lazy = bool(weights.lazy_tensors(model))
    if external_data is None:
        external_data = lazy or model_size_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if lazy and not external_data:
        raise GraphkitError(
            "a model with weights left on disk can only be saved with external data"
        )
    scratch.sweep(parent)
    tmpdir = tempfile.mkdtemp(prefix=scratch.prefix("save-"), dir=parent)
    try:
        tmp_model = Path(tmpdir) / out.name
        data_name = out.name + ".data"
        if lazy:
            weights.write_external(model, tmp_model, Path(tmpdir) / data_name, threshold=1024)
            _publish_data(Path(tmpdir) / data_name, parent / data_name)
        elif external_data:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            _publish_data(Path(tmpdir) / data_name, parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, out)
    except OSError as exc:
        raise GraphkitError(f"could not write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _publish_data(tmp: Path, final: Path) -> None:
    """Move the written data file beside the model; no file when every tensor was small."""
    if not tmp.exists() or tmp.stat().st_size == 0:
        return
    # onnx writes it 0600; the model beside it gets the usual mode, so must it
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, final)


def model_hash(model: onnx.ModelProto) -> str:
    """A stable fingerprint of the graph and weights, recorded in calibration tables."""
    h = hashlib.sha256()
    for init in model.graph.initializer:
        h.update(init.name.encode())
        for piece in weights.chunks(init):
            h.update(piece)
    for node in model.graph.node:
        h.update(node.op_type.encode())
        h.update("|".join(node.input).encode())
        h.update("|".join(node.output).encode())
    return h.hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file so that readers never see half of it."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise GraphkitError(f"output directory {parent} does not exist")
    try:
        scratch.sweep(parent)
        fd, tmp = tempfile.mkstemp(prefix=scratch.prefix("write-"), dir=parent)
    except OSError as exc:
        raise GraphkitError(f"output directory {parent} is not writable ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, out)
    except OSError as exc:  # name the user's file, not our temporary one
        Path(tmp).unlink(missing_ok=True)
        raise GraphkitError(f"could not write {out}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
