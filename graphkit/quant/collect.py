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
import onnx_ir as ir
import onnxruntime as ort

from graphkit.errors import GraphkitError
from graphkit.irgraph import keep_only_outputs, name_of, real_inputs, skeleton, to_ir, to_proto
from graphkit.quant.observers import DEFAULT_BINS, TensorStats, compiled_kernel
from graphkit.quant.weights import QUANTIZED_OPS
from graphkit.runtime.ort import graph_input_names, make_session, with_outputs

if TYPE_CHECKING:
    from graphkit.quant.table import CalibrationTable

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def is_weight(value: ir.Value) -> bool:
    """An initializer (graph input or not) or a Constant's output: a weight, not an activation."""
    producer = value.producer()
    return value.is_initializer() or (producer is not None and producer.op_type == "Constant")


def layer_activations(node: ir.Node) -> list[tuple[int, ir.Value]]:
    """(input index, value) pairs of a quantized node that carry activations."""
    if node.op_type in ("Conv", "ConvTranspose"):
        positions = [0]
    elif node.op_type in ("Gemm", "MatMul"):
        positions = [0, 1]
    else:
        return []
    return [
        (i, v)
        for i in positions
        if i < len(node.inputs) and (v := node.inputs[i]) is not None and not is_weight(v)
    ]


def quantizable(graph: ir.Graph, keep_float: Sequence[str] = ()) -> list[ir.Node]:
    """The nodes of the quantized op types, in graph order, but those kept float."""
    keep = set(keep_float)
    return [n for n in graph if n.op_type in QUANTIZED_OPS and n.name not in keep]


def _float_tensors(model: ir.Model) -> set[str]:
    """Names of tensors known (or inferred) to be float (inferred on the weightless
    skeleton: types do not depend on the weights' values)."""
    light = skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:  # noqa: BLE001
        inferred = light
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
    return tensors_to_observe(to_ir(model), select, keep_float)


def tensors_to_observe(
    model: ir.Model,
    select: str | Sequence[str] = "quantizable",
    keep_float: Sequence[str] = (),
) -> list[str]:
    """`select_tensors` on the IR."""
    graph = model.graph
    if isinstance(select, str) and select == "quantizable":
        out: dict[str, None] = {}
        for node in quantizable(graph, keep_float):
            for _, v in layer_activations(node):
                out[name_of(v)] = None
        return list(out)
    if isinstance(select, str) and select == "all":
        floats = _float_tensors(model)
        out = {name_of(v): None for v in real_inputs(graph) if name_of(v) in floats}
        for node in graph:
            for v in node.outputs:
                if v.name and v.name in floats and not is_weight(v):
                    out[v.name] = None
        return list(out)
    if isinstance(select, str):
        raise GraphkitError(
            f"tensor selection must be 'quantizable', 'all' or a list, got '{select}'"
        )
    known = {name_of(v) for v in graph.inputs} | {name_of(v) for n in graph for v in n.outputs}
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
        self.tensors = list(tensors)
        reduced = to_ir(model)
        outs = _add_reducers(reduced.graph, self.tensors)
        keep_only_outputs(reduced.graph, outs)
        self.outputs_run = [name_of(v) for v in outs]
        self.outputs = self.outputs_run
        self.from_feeds: list[str] = []
        self.session = make_session(to_proto(reduced), threads=threads, spin=spin)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple[float, float, int]]:
        v = self.run(feeds)
        return {
            t: (float(v[3 * i]), float(v[3 * i + 1]), int(v[3 * i + 2]))
            for i, t in enumerate(self.tensors)
        }


def _add_reducers(graph: ir.Graph, tensors: Sequence[str]) -> list[ir.Value]:
    """ReduceMin, ReduceMax and Size of each tensor, each placed right after the tensor's
    producer (at the start for graph inputs) so the tensor can be freed early; returns
    their outputs, three per tensor."""
    values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
    reducers: dict[ir.Value, list[ir.Node]] = {}
    outs: list[ir.Value] = []
    for i, t in enumerate(tensors):
        if t not in values:
            raise GraphkitError(f"tensor '{t}' is not in the model")
        keep = [ir.AttrInt64("keepdims", 0)]
        nodes = [
            ir.Node("", "ReduceMin", [values[t]], attributes=keep, num_outputs=1),
            ir.Node("", "ReduceMax", [values[t]], attributes=keep, num_outputs=1),
            ir.Node("", "Size", [values[t]], num_outputs=1),
        ]
        types = (values[t].type, values[t].type, ir.TensorType(ir.DataType.INT64))
        for node, what, kind in zip(nodes, ("min", "max", "size"), types):
            out = node.outputs[0]
            out.name, out.type = f"__graphkit_{what}_{i}", kind
            out.shape = None if kind is None else ir.Shape([])  # a scalar, when typed
            outs.append(out)
        reducers[values[t]] = nodes
    head = [n for v in real_inputs(graph) for n in reducers.pop(v, [])]
    for node in list(graph):
        made = [n for v in node.outputs for n in reducers.pop(v, [])]
        if made:
            graph.insert_after(node, made)
    if head and len(graph):
        graph.insert_before(graph[0], head)
    elif head:
        graph.extend(head)
    graph.extend(n for rest in reducers.values() for n in rest)
    return outs


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
    return quantized_names(to_ir(model).graph, table, keep_float)


def quantized_names(
    graph: ir.Graph, table: CalibrationTable, keep_float: Sequence[str] = ()
) -> list[str]:
    """`quantized_layers` on the IR."""
    keep = set(keep_float) | set(table.keep_float)
    out = []
    for node in quantizable(graph, sorted(keep)):
        acts = layer_activations(node)
        if acts and all(name_of(v) in table.activations for _, v in acts):
            out.append(node.name or "")
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
