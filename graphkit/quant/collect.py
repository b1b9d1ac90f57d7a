"""Collect activation statistics by running the model in onnxruntime, one sample at a time.

One session computes the model with every tensor to calibrate added as an extra graph
output, so a sample costs one inference. Its outputs go straight into the observers and
are dropped: memory holds one sample's tensors at most. `max_outputs_per_run` splits the
tensors into groups, one pass over the data per group, to bound memory further.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from graphkit.errors import GraphkitError
from graphkit.quant.observers import DEFAULT_BINS, TensorStats, compiled_kernel
from graphkit.quant.weights import QUANTIZED_OPS
from graphkit.runtime.ort import graph_input_names, make_session, with_outputs

if TYPE_CHECKING:
    from graphkit.quant.table import CalibrationTable

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def initializer_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # Constant outputs are weights too
        if node.op_type == "Constant":
            names.update(node.output)
    return names


def activation_inputs(node: onnx.NodeProto, constants: set[str]) -> list[tuple[int, str]]:
    """(input index, tensor) pairs of a quantized node that carry activations."""
    if node.op_type in ("Conv", "ConvTranspose"):
        positions = [0]
    elif node.op_type in ("Gemm", "MatMul"):
        positions = [0, 1]
    else:
        return []
    return [
        (i, node.input[i])
        for i in positions
        if i < len(node.input) and node.input[i] and node.input[i] not in constants
    ]


def quantizable_nodes(
    model: onnx.ModelProto, keep_float: Sequence[str] = ()
) -> list[onnx.NodeProto]:
    keep = set(keep_float)
    return [n for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in keep]


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of tensors known (or inferred) to be float."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        inferred = model
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {vi.name for vi in infos if vi.type.tensor_type.elem_type in FLOAT_TYPES}


def select_tensors(
    model: onnx.ModelProto,
    select: str | Sequence[str] = "quantizable",
    keep_float: Sequence[str] = (),
) -> list[str]:
    """The tensors to observe.

    "quantizable": activation inputs of Conv, ConvTranspose, Gemm, MatMul (the Q/DQ model
    needs these); "all": every float tensor the graph computes or takes (exporters for ncnn
    and TensorRT also scale Add / Concat inputs); or an explicit list of names.
    """
    constants = initializer_names(model)
    if isinstance(select, str) and select == "quantizable":
        out: list[str] = []
        for node in quantizable_nodes(model, keep_float):
            for _, name in activation_inputs(node, constants):
                if name not in out:
                    out.append(name)
        return out
    if isinstance(select, str) and select == "all":
        floats = _float_tensors(model)
        out = []
        for name in graph_input_names(model):
            if name in floats:
                out.append(name)
        for node in model.graph.node:
            for name in node.output:
                if name and name in floats and name not in constants and name not in out:
                    out.append(name)
        return out
    if isinstance(select, str):
        raise GraphkitError(
            f"tensor selection must be 'quantizable', 'all' or a list, got '{select}'"
        )
    known = {vi.name for vi in model.graph.input} | {o for n in model.graph.node for o in n.output}
    missing = [n for n in select if n not in known]
    if missing:
        raise GraphkitError(f"tensor '{missing[0]}' is not in the model")
    return list(dict.fromkeys(select))


def _as_array(value: ort.OrtValue) -> np.ndarray:
    """A numpy view of a float32 OrtValue that keeps it alive; other types are copied.

    session.run copies every output into a new numpy array: 230 MB per efficientpose
    sample of memory traffic and page faults that calibration does not need."""
    if value.data_type() != "tensor(float)":
        return value.numpy()
    shape = value.shape()
    size = math.prod(shape)
    if size == 0:
        return np.zeros(shape, np.float32)
    raw = (ctypes.c_float * size).from_address(value.data_ptr())
    raw.owner = value  # the view's base holds the OrtValue, which holds the buffer
    return np.frombuffer(raw, dtype=np.float32).reshape(shape)


class _Session:
    """An onnxruntime session computing `outputs_run`; the executors below set both."""

    outputs_run: list[str]
    session: ort.InferenceSession

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs; float32 ones are views of onnxruntime's own buffers (no copy)."""
        try:
            inputs = {
                k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                for k, v in feeds.items()
            }
            values = self.session.run_with_ort_values(self.outputs_run, inputs)
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphkitError(f"onnxruntime failed to run the model: {msg}") from None
        return [_as_array(v) for v in values]


class Executor(_Session):
    """onnxruntime session exposing `tensors`; __call__(feeds) -> {tensor: array}.

    spin=False: onnxruntime's idle threads sleep instead of busy-waiting, leaving the cores
    to the observers that run beside it (see `collect`)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        threads: int | None = None,
        spin: bool = True,
    ):
        inputs = set(graph_input_names(model))
        self.from_feeds = [t for t in tensors if t in inputs]
        self.outputs = [t for t in tensors if t not in inputs]
        if not self.outputs:  # a session must have at least one output
            self.outputs_run = [o.name for o in model.graph.output][:1]
        else:
            self.outputs_run = self.outputs
        self.session = make_session(
            with_outputs(model, self.outputs_run, prune=True), threads=threads, spin=spin
        )

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.run(feeds)
        out = dict(zip(self.outputs_run, values)) if self.outputs else {}
        for t in self.from_feeds:
            out[t] = feeds[t]
        return out


class RangeExecutor(_Session):
    """Min, max and size of each tensor computed inside the graph (ReduceMin / ReduceMax /
    Size), so no activation leaves onnxruntime: minmax calibration at inference speed.
    __call__(feeds) -> {tensor: (min, max, size)}."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        threads: int | None = None,
        spin: bool = True,
    ):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        self.tensors = list(tensors)
        reducers: dict[str, list[onnx.NodeProto]] = {}
        outs = []
        for i, t in enumerate(self.tensors):
            names = [f"__graphkit_min_{i}", f"__graphkit_max_{i}", f"__graphkit_size_{i}"]
            reducers[t] = [
                onnx.helper.make_node("ReduceMin", [t], [names[0]], keepdims=0),
                onnx.helper.make_node("ReduceMax", [t], [names[1]], keepdims=0),
                onnx.helper.make_node("Size", [t], [names[2]]),
            ]
            outs.extend(names)
        # place each reduction right after its producer so the tensor can be freed early
        nodes = [n for t in graph_input_names(model) for n in reducers.pop(t, [])]
        for node in copy.graph.node:
            nodes.append(node)
            for o in node.output:
                nodes.extend(reducers.pop(o, []))
        nodes.extend(n for rest in reducers.values() for n in rest)
        del copy.graph.node[:]
        copy.graph.node.extend(nodes)
        self.outputs_run = outs
        self.outputs = outs
        self.from_feeds: list[str] = []
        self.session = make_session(
            with_outputs(copy, outs, prune=True), threads=threads, spin=spin
        )

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple[float, float, int]]:
        v = self.run(feeds)
        return {
            t: (float(v[3 * i]), float(v[3 * i + 1]), int(v[3 * i + 2]))
            for i, t in enumerate(self.tensors)
        }


def _groups(tensors: Sequence[str], size: int | None) -> list[list[str]]:
    if not size or size >= len(tensors):
        return [list(tensors)]
    return [list(tensors[i : i + size]) for i in range(0, len(tensors), size)]


def _pipelined(
    execute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: Iterable[dict[str, np.ndarray]],
) -> Iterator[dict[str, np.ndarray]]:
    """execute(f) for each f, loading and running sample i+1 in a thread while the caller
    observes sample i (onnxruntime releases the GIL while it runs). The caller frees each
    tensor of sample i as soon as it is observed, while onnxruntime fills sample i+1."""
    it = iter(feeds)

    def step() -> dict[str, np.ndarray] | None:
        f = next(it, None)
        return None if f is None else execute(f)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(step)
        while True:
            result = future.result()
            if result is None:
                return
            future = pool.submit(step)
            yield result
            del result


def _observe(
    outputs: dict[str, np.ndarray],
    stats: dict[str, TensorStats],
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Observe every float tensor of one sample, then drop them.

    With a pool, tensors are histogrammed in parallel, largest first (the compiled kernel
    releases the GIL; each TensorStats is updated by one thread only)."""
    items = [(k, v) for k, v in outputs.items() if np.issubdtype(v.dtype, np.floating)]
    outputs.clear()
    if pool is None:
        while items:
            name, value = items.pop()
            stats[name].update(value)
            del value  # freed right after its update
        return
    items.sort(key=lambda kv: -kv[1].size)
    for _ in pool.map(lambda kv: stats[kv[0]].update(kv[1]), items):
        pass


def collect(
    model: onnx.ModelProto,
    samples: Callable[[], Iterable[dict[str, np.ndarray]]],
    tensors: Sequence[str],
    *,
    bins: int = DEFAULT_BINS,
    threads: int | None = None,
    max_outputs_per_run: int | None = None,
    on_sample: Callable[[], None] | None = None,
    overlap: bool = False,
    observers: int | None = None,
    histograms: bool = True,
) -> dict[str, TensorStats]:
    """Statistics of `tensors` over the feeds `samples()` yields (called once per group).

    Sessions run with non-spinning threads: idle onnxruntime workers would otherwise burn
    the cores the histograms need. One sample's tensors are alive at a time: the sample is
    run, then its tensors are histogrammed by `observers` threads (default: one per core
    when the compiled kernel is there, which releases the GIL; one with the numpy
    fallback, whose np.bincount holds it) and dropped.
    overlap=True instead loads and runs the next sample in a thread while the current one
    is histogrammed (by one thread): up to two samples' tensors are alive, and on 2 cores it
    is no faster than parallel observers (measured, docs/calibration.md).
    histograms=False reduces each tensor to min/max inside onnxruntime (enough for minmax).
    """
    stats = {t: TensorStats(bins=bins) for t in tensors}
    if not histograms:
        ranges = RangeExecutor(model, list(tensors), threads=threads, spin=False)
        for feeds in samples():
            for name, (lo, hi, size) in ranges(feeds).items():
                stats[name].update_range(lo, hi, size)
            if on_sample is not None:
                on_sample()
        return {t: s for t, s in stats.items() if s.samples}
    if observers is None:
        observers = (os.cpu_count() or 1) if compiled_kernel() is not None else 1
    pool = ThreadPoolExecutor(observers) if observers > 1 and not overlap else None
    try:
        for group in _groups(list(tensors), max_outputs_per_run):
            execute = Executor(model, group, threads=threads, spin=False)
            stream = _pipelined(execute, samples()) if overlap else map(execute, samples())
            for outputs in stream:
                _observe(outputs, stats, pool)
                del outputs
                if on_sample is not None:
                    on_sample()
            del execute
    finally:
        if pool is not None:
            pool.shutdown()
    return {t: s for t, s in stats.items() if s.samples}


def quantized_layers(
    model: onnx.ModelProto, table: CalibrationTable, keep_float: Sequence[str] = ()
) -> list[str]:
    """Names of the nodes `insert_qdq(model, table, keep_float)` quantizes, in graph order."""
    keep = set(keep_float) | set(table.keep_float)
    constants = initializer_names(model)
    out = []
    for node in quantizable_nodes(model, sorted(keep)):
        acts = activation_inputs(node, constants)
        if acts and all(t in table.activations for _, t in acts):
            out.append(node.name)
    return out


def spec_samples(
    spec, count: int, skip: int = 0
) -> tuple[list[dict[str, np.ndarray]], list[str] | None]:
    """`count` samples of an input spec (path or InputSpec) after the first `skip` (from
    the start when there are none after it), and the outputs its decode section reads
    (None without one: every output is scored)."""
    import itertools

    from graphkit.data import iter_samples, load_input_spec

    if count < 1:
        raise GraphkitError(f"the sensitivity analysis needs at least 1 sample, got {count}")
    if not hasattr(spec, "source"):
        spec = load_input_spec(spec)
    samples = [s.feeds for s in itertools.islice(iter_samples(spec), skip, skip + count)]
    if not samples:  # too few samples to hold some out: reuse the first ones
        samples = [s.feeds for s in itertools.islice(iter_samples(spec), count)]
    outputs = None
    if getattr(spec, "decode", None):
        from graphkit.pose.decoders import build_decoder

        outputs = list(build_decoder(spec.decode).outputs)
    return samples, outputs
