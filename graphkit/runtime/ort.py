"""Run ONNX models in onnxruntime's CPU provider, including any intermediate tensor.

Intermediate tensors are exposed by adding them as graph outputs on a copy of the model;
their types come from shape inference, so the copy stays valid.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from graphkit import weights
from graphkit.errors import GraphkitError, ModelError
from graphkit.model import EXTERNAL_DATA_THRESHOLD, model_size_bytes, save_model
from graphkit.runtime.int8_kernels import qdq_level
from graphkit.scratch import prefix as scratch_prefix
from graphkit.scratch import sweep

ONNX_TO_NUMPY = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.BOOL: np.bool_,
}


_ARENA_LOCK = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet in this process


def shared_arena() -> bool:
    """One CPU memory arena for every session of the process (registered once).

    Calibration builds hundreds of short-lived sessions and keeps dozens alive (one per
    part of the model in bias correction); each with an arena of its own holds its peak
    and every new one page-faults fresh memory. Shared (`session.use_env_allocators`):
    efficientpose's default plan 53.4 -> 43.7 s, peak RSS 2.43 -> 0.98 GB, the same plan
    (`benchmarks/shared_arena.py`). The arena keeps what it grew to until the process
    ends: GRAPHKIT_SHARED_ARENA=0 gives every session its own again (a long-running
    process that calibrates once). False then, or where onnxruntime cannot register one."""
    global _shared_arena
    with _ARENA_LOCK:
        if _shared_arena is None and os.environ.get("GRAPHKIT_SHARED_ARENA", "1") == "0":
            _shared_arena = False
        if _shared_arena is None:
            try:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _shared_arena = True
            except Exception:  # noqa: BLE001 - an older or stripped onnxruntime: own arenas
                _shared_arena = False
        return _shared_arena


def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
    """spin=False stops idle worker threads from busy-waiting: about as fast alone, faster
    when the process also does CPU work of its own (calibration histograms) or the cores are
    shared (measured: FP32 efficientpose 10.4 s against 18.5 s on a loaded 2-core machine).
    Every session allocates from the process's `shared_arena`."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if shared_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


# where a `memory_stub` initializer's bytes are: in the OrtValues make_session is given
IN_MEMORY = "graphkit-in-memory"


def memory_stub(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The header of `tensor` (name, type, dims) without its bytes, which `make_session`
    takes from the `memory` it is given: a model of stubs serializes in microseconds
    where one holding its weights copies them twice (HRNet-W32: 172 ms, and onnxruntime
    builds the session 100 ms faster from OrtValues)."""
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    size = int(np.prod(tensor.dims)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    for key, value in (("location", IN_MEMORY), ("offset", "0"), ("length", str(size))):
        stub.external_data.add(key=key, value=value)
    return stub


def _stub_names(model: onnx.ModelProto) -> list[str]:
    return [
        t.name
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        and any(e.key == "location" and e.value == IN_MEMORY for e in t.external_data)
    ]


def make_session(
    model: onnx.ModelProto,
    threads: int | None = None,
    optimize: bool = True,
    spin: bool = True,
    as_written: bool = False,
    memory: Mapping[str, ort.OrtValue] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime CPU session for an in-memory model (via a temp file when > 2 GB).
    as_written=True: a Q/DQ model runs with the integer arithmetic it writes, also on CPUs
    whose fused int8 kernels saturate (`graphkit.runtime.int8_kernels.qdq_level`).
    `memory`: the bytes of the model's `memory_stub` initializers, by name."""
    opts = session_options(threads, spin)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif as_written:
        opts.graph_optimization_level = qdq_level()
    stubs = _stub_names(model)
    if stubs:
        if memory is None or any(n not in memory for n in stubs):
            raise GraphkitError("a model of weight stubs needs the weights they stand for")
        opts.add_external_initializers(stubs, [memory[n] for n in stubs])
    try:
        lazy = bool(weights.lazy_tensors(model))
        relative = weights.relative_copy(model) if lazy else None
        if relative is not None and model_size_bytes(relative[0]) < EXTERNAL_DATA_THRESHOLD:
            # weights left on disk: onnxruntime memory-maps them from their own file
            copy, folder = relative
            opts.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(folder)
            )
            # pre-packing would copy every weight: big models are lazy to stay at 1x
            opts.add_session_config_entry("session.disable_prepacking", "1")
            return ort.InferenceSession(
                copy.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        if not lazy and model_size_bytes(model) < EXTERNAL_DATA_THRESHOLD:
            return ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        sweep()
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("session-")) as tmp:
            path = save_model(model, Path(tmp) / "model.onnx", external_data=True)
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any runtime failure becomes one sentence
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from None


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def input_shape(vi: onnx.ValueInfoProto, dynamic: int = 1) -> list[int]:
    """Concrete shape of a graph input, with `dynamic` for unknown dims."""
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else dynamic)
    return dims


# the sizes tried for free dims (batch excepted) until the model runs: a multi-branch
# HRNet cannot run at 1x1 (its branches meet at 1/32 scale)
FREE_DIM_SIZES = (1, 64, 128, 256, 512)
_SHAPES: ContextVar[dict[str, list[int]] | None] = ContextVar("sample_shapes", default=None)


@contextmanager
def sample_shapes(shapes: dict[str, list[int]] | None) -> Iterator[None]:
    """Within the block, `sample_inputs` gives inputs of these names these shapes (when the
    rank matches): the pipeline sets the verification size once, passes that check
    themselves (strip-flip-test, extract) use it too."""
    token = _SHAPES.set(shapes)
    try:
        yield
    finally:
        _SHAPES.reset(token)


def runnable_shapes(
    model: onnx.ModelProto, given: dict[str, list[int]] | None = None
) -> tuple[dict[str, list[int]], str]:
    """Shapes to verify `model` on, and a sentence saying how they were chosen: `given`
    where named; else fixed dims as they are, a free first (batch) dim 1, and the other
    free dims the first of FREE_DIM_SIZES the model runs at with no empty output."""
    given = dict(given or {})
    inputs = {vi.name: vi for vi in model.graph.input if vi.name in set(graph_input_names(model))}
    for name, shape in given.items():
        if name not in inputs:
            raise GraphkitError(
                f"--verify-shape names '{name}', not an input of the model "
                f"(inputs: {', '.join(inputs)})"
            )
        fixed = input_shape(inputs[name], dynamic=0)
        if len(shape) != len(fixed) or any(f and f != d for f, d in zip(fixed, shape)):
            raise GraphkitError(
                f"--verify-shape {name}: {'x'.join(map(str, shape))} does not fit the model's "
                f"input {'x'.join(str(d) if d else '?' for d in fixed)}"
            )
    free = [n for n in inputs if n not in given and 0 in input_shape(inputs[n], dynamic=0)]
    if not free:
        shapes = {n: given.get(n) or input_shape(vi) for n, vi in inputs.items()}
        how = "given" if given else "the model's own"
        return shapes, f"{how} input shapes"
    session_error = None
    sess = make_session(model)  # a model that cannot load fails here, in one sentence
    for size in FREE_DIM_SIZES:
        shapes = dict(given)
        for n in free:
            dims = input_shape(inputs[n], dynamic=0)
            shapes[n] = [d or (1 if i == 0 else size) for i, d in enumerate(dims)]
        shapes.update({n: input_shape(inputs[n]) for n in inputs if n not in shapes})
        with sample_shapes(shapes):
            feeds = sample_inputs(model)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a size that fails is expected here, not an error to log
        try:
            outputs = sess.run(None, feeds, quiet)
        except Exception as exc:  # noqa: BLE001 - too small for the model: try the next
            session_error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            continue
        if any(np.asarray(o).size == 0 for o in outputs):
            session_error = "an output is empty at that size"  # nothing would be compared
            continue
        described = ", ".join(f"{n} {'x'.join(map(str, shapes[n]))}" for n in free)
        return shapes, f"free dims set to {size} ({described}): the first of " + ", ".join(
            map(str, FREE_DIM_SIZES)
        ) + " the model runs at"
    raise GraphkitError(
        "the model runs at none of the sizes "
        + ", ".join(map(str, FREE_DIM_SIZES))
        + f" for its free input dims ({session_error}); give one with --verify-shape"
    )


def sample_inputs(
    model: onnx.ModelProto, seed: int = 0, dynamic_dim: int = 1
) -> dict[str, np.ndarray]:
    """Random inputs of the right dtype and shape: images for ints (0..255), N(0,1) floats.
    Free dims are `dynamic_dim`, or as set by `sample_shapes`."""
    rng = np.random.default_rng(seed)
    chosen = _SHAPES.get() or {}
    names = set(graph_input_names(model))
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in names:
            continue
        elem = vi.type.tensor_type.elem_type
        dtype = ONNX_TO_NUMPY.get(elem)
        if dtype is None:
            raise GraphkitError(
                f"input '{vi.name}' has type {TensorProto.DataType.Name(elem)}, "
                "which graphkit cannot generate samples for"
            )
        shape = input_shape(vi, dynamic_dim)
        if vi.name in chosen and len(chosen[vi.name]) == len(shape):
            fixed = input_shape(vi, dynamic=0)
            shape = [f or c for f, c in zip(fixed, chosen[vi.name])]
        if np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 256, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def prune_to_outputs(model: onnx.ModelProto) -> int:
    """Delete, in place, the nodes that no graph output depends on; returns how many.

    onnxruntime runs every node of a session's graph whatever outputs are asked for: a
    calibration session that only exposes inner tensors would still compute the heads and
    the post-processing after them (on efficientpose the full-resolution ConvTranspose)."""
    from graphkit.irgraph import keep_only_outputs, to_ir, to_proto

    graph = to_ir(model)
    removed = keep_only_outputs(graph.graph, list(graph.graph.outputs))
    if removed:
        model.graph.CopyFrom(to_proto(graph).graph)
    return removed


def output_infos(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, onnx.ValueInfoProto]:
    """The typed value infos of tensors `names` (shape inference where the graph has none)."""
    known = {vi.name: vi for vi in [*model.graph.output, *model.graph.input]}
    if any(n not in known for n in names):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - untyped outputs are accepted below
            inferred = model
        for vi in inferred.graph.value_info:
            known.setdefault(vi.name, vi)
    return {n: known[n] for n in names if n in known}


def with_outputs(
    model: onnx.ModelProto,
    names: list[str],
    prune: bool = False,
    infos: dict[str, onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names` (any tensors in it).

    prune=True also drops the nodes those outputs do not need (see prune_to_outputs).
    `infos` (from `output_infos`) saves the shape inference when called per candidate."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {vi.name: vi for vi in copy.graph.output}
    known.update(infos or {})
    if any(n not in known for n in names):
        known.update({k: v for k, v in output_infos(copy, names).items() if k not in known})
    del copy.graph.output[:]
    for n in names:
        if n in known and known[n].type.tensor_type.elem_type:
            copy.graph.output.append(known[n])
        else:
            copy.graph.output.append(helper.make_empty_tensor_value_info(n))
    if prune:
        prune_to_outputs(copy)
    return copy


def run(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run once and return the named tensors (default: the graph outputs)."""
    target = model if outputs is None else with_outputs(model, outputs)
    sess = make_session(target, threads=threads, optimize=outputs is None)
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure becomes one sentence
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime failed to run the model: {msg}") from None
    return dict(zip(names, values))


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
