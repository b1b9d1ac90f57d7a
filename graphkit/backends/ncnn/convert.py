"""ONNX -> ncnn with the `pnnx` binary, made reproducible and checked.

pnnx refuses ONNX IR > 13, writes many side files next to its input and keeps dynamic
shape arithmetic (tf2onnx's Shape/Slice/Pad chains) that ncnn cannot run. So: fold the
model with onnxsim at the fixed input shape, save it with IR <= 13 into a scratch
directory, run pnnx there (fp32 weights, `fp16=0`, so weights are exact for calibration),
and keep only the .param/.bin. pnnx names blobs itself: graph inputs become in0, in1, ...
and graph outputs out0, out1, ... in ONNX order, which is how results are mapped back.
NHWC inputs (tf2onnx exports) work: pnnx inserts a Permute after the input. ViT
attention works after graphkit's split-qkv pass (its 5-D q/k/v reshape made 4-D, exact).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from graphkit import scratch
from graphkit.errors import BackendError, GraphkitError
from graphkit.irgraph import to_ir, to_proto
from graphkit.model import save_model

PNNX_MAX_IR = 13
_DTYPES = {
    onnx.TensorProto.FLOAT: "f32",
    onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64",
}


@dataclass
class NcnnModel:
    param: Path
    bin: Path
    inputs: dict[str, str]  # ONNX input name -> ncnn blob
    outputs: dict[str, str]  # ONNX output name -> ncnn blob
    input_shapes: dict[str, list[int]]


def pnnx_binary() -> str:
    """The pnnx executable, found without importing anything: the binary inside the
    installed pnnx package (`import pnnx` and pip's `pnnx` console script both import
    torch, which the binary does not need), else a native `pnnx` on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("pnnx")  # locates the package, does not run it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(folder) / "pnnx"
        if cand.is_file() and _is_native(cand):
            return str(cand)
    found = shutil.which("pnnx")
    if found and _is_native(Path(found)):
        return found
    raise BackendError(
        "the pnnx converter is not installed: pip install --no-deps pnnx "
        "(its binary needs no torch)"
    )


def _is_native(path: Path) -> bool:
    """An executable file that is not a script (pip's console scripts start with #!)."""
    try:
        with path.open("rb") as f:
            return f.read(2) != b"#!" and os.access(path, os.X_OK)
    except OSError:
        return False


def fixed_inputs(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim
        ]
        if shapes and vi.name in shapes:
            dims = list(shapes[vi.name])
        if dims and dims[0] <= 0:
            dims[0] = 1
        if any(d <= 0 for d in dims):
            raise GraphkitError(
                f"input '{vi.name}' has a variable size {dims}; the ncnn conversion needs a "
                "fixed one (pass --data: its samples fix it)"
            )
        out[vi.name] = dims
    return out


def float_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Integer pixel inputs read only through Cast-to-float become float inputs: ncnn feeds
    float Mats, and pnnx would keep the Cast as `Tensor.to`, a layer ncnn lacks (TF
    exports such as MoveNet take int32 images)."""
    graph = to_ir(model)
    changed = False
    for value in graph.graph.inputs:
        users = [u.node for u in value.uses()]
        if value.dtype in (ir.DataType.FLOAT, None) or not users or value.is_graph_output():
            continue
        if not all(_casts_to_float(n, graph.graph) for n in users):
            continue
        value.type = ir.TensorType(ir.DataType.FLOAT)
        for cast in users:
            cast.outputs[0].replace_all_uses_with(value)
            graph.graph.remove(cast, safe=True)
        changed = True
    return to_proto(graph) if changed else model


def _casts_to_float(node: ir.Node, graph: ir.Graph) -> bool:
    to = node.attributes.get_int("to", 0)
    return (
        node.op_type == "Cast"
        and node.graph is graph
        and to == ir.DataType.FLOAT
        and not node.outputs[0].is_graph_output()
    )


def without_nops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model after graphkit's eliminate-nops: pnnx turns a single-output Split (TF's
    unstack of the batch) into a Slice without parameters, which crashes ncnn."""
    from graphkit.passes.nops import eliminate_nops

    work = onnx.ModelProto()
    work.CopyFrom(model)
    return eliminate_nops(work).model


def with_4d_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model after graphkit's split-qkv: a ViT's 5-D q/k/v head reshape, which pnnx
    leaves as `Tensor.reshape` (ncnn has at most 4 dimensions), as three 4-D ones."""
    from graphkit.passes.attention import split_qkv

    work = onnx.ModelProto()
    work.CopyFrom(model)
    return split_qkv(work).model


def simplify(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """Constant-fold shape arithmetic at the fixed input shape (what lets ncnn run it)."""
    if not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        return model  # nothing to fold; onnxsim's import alone costs seconds
    try:
        import onnxsim
    except ImportError:  # pragma: no cover - onnxsim is a dependency
        return model
    try:
        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes)
    except Exception:  # noqa: BLE001 - onnxsim failing just means: convert unsimplified
        return model
    return simplified if ok else model


def convert(
    model: onnx.ModelProto,
    out_dir: str | Path,
    name: str = "model",
    shapes: dict[str, list[int]] | None = None,
    timeout: float = 600,
) -> NcnnModel:
    """Write `<out_dir>/<name>.ncnn.param/.bin` converted by pnnx; returns the name maps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = fixed_inputs(model, shapes)
    model = simplify(with_4d_attention(without_nops(float_inputs(model))), shapes)
    inits = {i.name for i in model.graph.initializer}
    vis = [vi for vi in model.graph.input if vi.name not in inits]
    specs = []
    for vi in vis:
        dtype = _DTYPES.get(vi.type.tensor_type.elem_type)
        if dtype is None:
            raise GraphkitError(f"input '{vi.name}' has a type pnnx cannot feed")
        specs.append("[" + ",".join(str(d) for d in shapes[vi.name]) + "]" + dtype)
    scratch.sweep()
    with tempfile.TemporaryDirectory(prefix=scratch.prefix("pnnx-")) as tmp:
        src = Path(tmp) / "model.onnx"
        save_model(model, src, ir_version=min(model.ir_version, PNNX_MAX_IR))
        param, binf = Path(tmp) / "m.ncnn.param", Path(tmp) / "m.ncnn.bin"
        cmd = [
            pnnx_binary(),
            str(src),
            "inputshape=" + ",".join(specs),
            "fp16=0",
            f"ncnnparam={param}",
            f"ncnnbin={binf}",
            f"pnnxparam={tmp}/m.pnnx.param",
            f"pnnxbin={tmp}/m.pnnx.bin",
            f"pnnxpy={tmp}/m_pnnx.py",
            f"pnnxonnx={tmp}/m.pnnx.onnx",
            f"ncnnpy={tmp}/m_ncnn.py",
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"pnnx did not finish converting the model within {timeout:.0f} s"
            ) from None
        if not param.exists() or not binf.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BackendError(
                "pnnx could not convert the model to ncnn"
                + (f" (it said: {tail[-1].strip()})" if tail else "")
            )
        dst_param, dst_bin = out / f"{name}.ncnn.param", out / f"{name}.ncnn.bin"
        _place(binf, dst_bin)
        _place(param, dst_param)
    check_runnable(dst_param)
    inputs = {vi.name: f"in{i}" for i, vi in enumerate(vis)}
    outputs = {o.name: f"out{i}" for i, o in enumerate(model.graph.output)}
    return NcnnModel(dst_param, dst_bin, inputs, outputs, shapes)


def check_runnable(param_path: Path) -> None:
    """Refuse a conversion that left layers ncnn does not have (pnnx keeps ops it could not
    map, e.g. `Tensor.to` or `pnnx.Expression`, as unknown layer types)."""
    from graphkit.backends.ncnn.runtime import _ncnn, read_param

    ncnn = _ncnn()
    unknown = sorted(
        {lay.type for lay in read_param(param_path).layers if ncnn.layer_to_index(lay.type) < 0}
    )
    if unknown:
        param_path.unlink(missing_ok=True)
        param_path.with_suffix(".bin").unlink(missing_ok=True)
        raise BackendError(
            f"pnnx left ops ncnn cannot run ({', '.join(unknown)}); simplify or cut the model "
            "(e.g. remove in-graph post-processing) before exporting to ncnn"
        )


def _place(src: Path, dst: Path) -> None:
    """Copy next to the destination, then rename: readers never see half a file."""
    tmp = dst.with_name(scratch.prefix("place-") + dst.name)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def check_conversion(
    model: onnx.ModelProto, nm: NcnnModel, feeds: dict[str, np.ndarray]
) -> dict[str, float]:
    """Max |ncnn fp32 - onnxruntime| per output on one input (the conversion's check)."""
    from graphkit.backends.ncnn.runtime import NcnnNet
    from graphkit.runtime.ort import run

    ref = run(model, feeds)
    net = NcnnNet(nm.param, nm.bin)
    got = net.run({nm.inputs[k]: v for k, v in feeds.items()}, nm.outputs.values())
    diffs = {}
    for onnx_name, blob in nm.outputs.items():
        r, g = ref[onnx_name], got[blob]
        if r.size != g.size:
            raise BackendError(
                f"ncnn output {blob} has {g.size} values but ONNX output '{onnx_name}' has {r.size}"
            )
        diffs[onnx_name] = float(np.abs(g.reshape(r.shape) - r).max())
    return diffs
