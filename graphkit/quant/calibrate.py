"""Calibrate a model for int8: real samples in, a backend-neutral CalibrationTable out.

    table = calibrate("model.onnx", "examples/models/efficientpose.yaml", method="mse")
    table.save("table.json")
    qdq = insert_qdq(load_model("model.onnx"), table)      # graphkit.quant.qdq

Statistics stream (one sample in memory at a time) and merge exactly, so `workers=N`
splits the data over N processes and gives the same table as one process. Nothing is
written here: a Ctrl-C leaves no partial table behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import name_of, to_ir
from graphkit.model import load_model, model_hash
from graphkit.quant.calibrators import CALIBRATORS, canonical_method, threshold
from graphkit.quant.collect import collect, layer_activations, quantizable, tensors_to_observe
from graphkit.quant.observers import DEFAULT_BINS, TensorStats, merge_all
from graphkit.quant.table import ActivationEntry, CalibrationTable, WeightEntry
from graphkit.quant.weights import weight_amax, weight_axis

MIN_AMAX = 1e-8  # a tensor that was always 0 still needs a positive scale


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, ""
    return load_model(model), str(model)


def _load_spec(spec: Any, limit: int | None):
    from graphkit.data import load_input_spec

    if not hasattr(spec, "source"):
        spec = load_input_spec(spec)
    if limit is not None:
        if limit < 1:
            raise GraphkitError(f"--limit must be at least 1, got {limit}")
        spec = spec.with_source(limit=limit)
    return spec


def check_keep_float(model: onnx.ModelProto, keep_float: Sequence[str]) -> None:
    names = {n.name for n in model.graph.node}
    for name in keep_float:
        if name not in names:
            raise GraphkitError(f"--keep-float node '{name}' is not a node of the model")


def collect_statistics(
    model: onnx.ModelProto,
    spec: Any,
    tensors: Sequence[str],
    *,
    workers: int = 1,
    bins: int = DEFAULT_BINS,
    max_outputs_per_run: int | None = None,
    on_sample: Callable[[], None] | None = None,
    threads: int | None = None,
    histograms: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
) -> dict[str, TensorStats]:
    """Stream the spec's samples through the model; merge per-worker statistics.

    histograms=False keeps min/max only (computed inside onnxruntime): enough for minmax.
    executor="ray": the shards are Ray tasks (`graphkit.runtime.ray_tasks`), `workers`
    of them (default: one per CPU of the cluster)."""
    from graphkit.data import iter_samples

    if workers < 1:
        raise GraphkitError(f"--workers must be at least 1, got {workers}")
    if executor == "ray":
        return _collect_ray(
            model,
            spec,
            tensors,
            workers,
            bins,
            max_outputs_per_run,
            on_sample,
            histograms,
            ray_address,
        )
    if executor != "local":
        raise GraphkitError(f"unknown executor '{executor}' (local or ray)")
    if workers == 1:
        return collect(
            model,
            lambda: (s.feeds for s in iter_samples(spec)),
            tensors,
            bins=bins,
            threads=threads,
            max_outputs_per_run=max_outputs_per_run,
            on_sample=on_sample,
            histograms=histograms,
        )
    return _collect_parallel(
        model, spec, tensors, workers, bins, max_outputs_per_run, on_sample, histograms
    )


def _worker(
    model_bytes, spec, index, count, tensors, bins, max_outputs, threads, histograms, out_q
) -> None:
    from graphkit.data import iter_samples, shard

    die_with_parent()
    try:
        part = shard(spec, index, count)
        model = onnx.ModelProto.FromString(model_bytes)
        stats = collect(
            model,
            lambda: (s.feeds for s in iter_samples(part)),
            tensors,
            bins=bins,
            threads=threads,
            max_outputs_per_run=max_outputs,
            observers=threads,  # this worker's share of the cores, like its session
            on_sample=lambda: out_q.put(("tick", index, None)),
            histograms=histograms,
        )
        out_q.put(("done", index, stats))
    except GraphkitError as exc:
        out_q.put(("error", index, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        out_q.put(("error", index, f"worker {index} failed: {type(exc).__name__}: {exc}"))


def die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (even by SIGKILL), so a
    killed `graphkit calibrate --workers N` leaves no process behind. No-op elsewhere."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _collect_parallel(model, spec, tensors, workers, bins, max_outputs, on_sample, histograms):
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    data = model.SerializeToString()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                data,
                spec,
                i,
                workers,
                list(tensors),
                bins,
                max_outputs,
                threads,
                histograms,
                out_q,
            ),
            daemon=True,
        )
        for i in range(workers)
    ]
    results: dict[int, dict[str, TensorStats]] = {}
    try:
        for p in procs:
            p.start()
        while len(results) < workers:
            try:
                kind, index, payload = out_q.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p for i, p in enumerate(procs) if not p.is_alive() and i not in results]
                if dead and out_q.empty():
                    raise GraphkitError("a calibration worker process died (out of memory?)")
                continue
            if kind == "tick":
                if on_sample is not None:
                    on_sample()
            elif kind == "done":
                results[index] = payload
            else:
                raise GraphkitError(payload)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
    return merge_all(results[i] for i in sorted(results))


def _shard_statistics(spec, index, count, tensors, bins, max_outputs, histograms, model_bytes):
    """One Ray task: the statistics of shard `index` of `count`, and how many sample runs
    they took (for progress and the sample count)."""
    from graphkit.data import iter_samples, shard

    part = shard(spec, index, count)
    runs = [0]

    def tick() -> None:
        runs[0] += 1

    stats = collect(
        onnx.ModelProto.FromString(model_bytes),
        lambda: (s.feeds for s in iter_samples(part)),
        tensors,
        bins=bins,
        threads=1,
        max_outputs_per_run=max_outputs,
        observers=1,
        on_sample=tick,
        histograms=histograms,
    )
    return stats, runs[0]


def _collect_ray(model, spec, tensors, workers, bins, max_outputs, on_sample, histograms, address):
    from graphkit.runtime.ray_tasks import connect, run_tasks

    count = workers if workers > 1 else connect(address)

    def done(_i: int, result) -> None:
        for _ in range(result[1]):
            if on_sample is not None:
                on_sample()

    parts = run_tasks(
        _shard_statistics,
        [(spec, i, count, list(tensors), bins, max_outputs, histograms) for i in range(count)],
        shared={"model_bytes": model.SerializeToString()},
        on_done=done,
        address=address,
    )
    return merge_all(stats for stats, _ in parts)


def weight_entries(
    model: onnx.ModelProto, keep_float: Sequence[str] = (), per_channel: bool = True
) -> dict[str, WeightEntry]:
    """Symmetric absmax of every constant input of the quantized layers."""
    return _weight_entries(to_ir(model).graph, keep_float, per_channel)


def _weight_entries(
    graph: ir.Graph, keep_float: Sequence[str], per_channel: bool
) -> dict[str, WeightEntry]:
    out: dict[str, WeightEntry] = {}
    for node in quantizable(graph, keep_float):
        positions = [1] if node.op_type in ("Conv", "ConvTranspose") else [0, 1]
        for pos in positions:
            v = node.inputs[pos] if pos < len(node.inputs) else None
            if v is None or v.const_value is None or not v.is_initializer() or v.name in out:
                continue
            w = v.const_value.numpy()
            if not np.issubdtype(w.dtype, np.floating):
                continue
            axis = weight_axis(ir.serde.serialize_node(node), w.ndim, pos)
            amax = weight_amax(w, axis=axis, per_channel=per_channel)
            out[name_of(v)] = WeightEntry(
                amax=[float(a) for a in amax],
                axis=axis if per_channel else -1,
                node=node.name or "",
                op_type=node.op_type,
            )
    return out


def build_table(
    model: onnx.ModelProto,
    stats: dict[str, TensorStats],
    method: str,
    settings: dict[str, Any] | None = None,
    *,
    keep_float: Sequence[str] = (),
    per_channel: bool = True,
    model_path: str = "",
    data_source: str = "",
    num_samples: int = 0,
) -> CalibrationTable:
    """Thresholds from statistics (pure: no inference), plus weight ranges."""
    return _build_table(
        model,
        to_ir(model).graph,
        stats,
        method,
        settings,
        keep_float=keep_float,
        per_channel=per_channel,
        model_path=model_path,
        data_source=data_source,
        num_samples=num_samples,
    )


def _build_table(
    model: onnx.ModelProto,
    graph: ir.Graph,
    stats: dict[str, TensorStats],
    method: str,
    settings: dict[str, Any] | None,
    *,
    keep_float: Sequence[str],
    per_channel: bool,
    model_path: str,
    data_source: str,
    num_samples: int,
) -> CalibrationTable:
    """`build_table` with the model's IR `graph` (converted once per calibration)."""
    method = canonical_method(method)
    settings = dict(settings or {})
    consumers: dict[str, list[list[str]]] = {}
    for node in quantizable(graph, keep_float):
        for _, v in layer_activations(node):
            consumers.setdefault(name_of(v), []).append([node.op_type, node.name or ""])
    names = [name for name, s in stats.items() if s.count]
    if not names:  # a plan without thresholds would quantize nothing, silently
        raise GraphkitError(
            f"calibration found no activation ranges: none of the {len(stats)} observed "
            "tensors held a finite value (check the data for NaN or inf)"
        )
    # KL curves are numpy work on (candidates x bins) arrays, which releases the GIL
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        amaxes = pool.map(lambda name: threshold(method, stats[name], **settings), names)
    acts = {}
    for name, amax in zip(names, amaxes):
        s = stats[name]
        acts[name] = ActivationEntry(
            amax=float(max(amax, MIN_AMAX)),
            min=float(s.min),
            max=float(s.max),
            consumers=consumers.get(name, []),
        )
    return CalibrationTable(
        method=method,
        settings={
            **settings,
            "bins": next(iter(stats.values())).bins if stats else DEFAULT_BINS,
            "per_channel": per_channel,
        },
        model_hash=model_hash(model),
        model_path=model_path,
        data_source=data_source,
        num_samples=num_samples,
        activations=acts,
        weights=_weight_entries(graph, keep_float, per_channel),
        keep_float=list(keep_float),
    )


def describe_source(spec: Any) -> str:
    src = spec.source
    where = src.ann or src.images or src.path or ""
    text = f"{src.type}:{where}"
    if src.limit:
        text += f" (limit {src.limit})"
    return text


def calibrate_statistics(
    model: onnx.ModelProto,
    spec: Any,
    *,
    method: str = "mse",
    workers: int = 1,
    tensors: str | Sequence[str] = "quantizable",
    keep_float: Sequence[str] = (),
    per_channel: bool = True,
    bins: int = DEFAULT_BINS,
    max_outputs_per_run: int | None = None,
    histograms: bool | None = None,
    on_sample: Callable[[], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> tuple[dict[str, TensorStats], Callable[..., CalibrationTable]]:
    """One pass over the data: the statistics, and `build(method, settings)` turning them
    into a table for any method (histograms are kept unless only minmax is wanted)."""
    from graphkit.data import check_against_model, count_samples

    check_keep_float(model, keep_float)
    check_against_model(spec, model)
    total = count_samples(spec)
    if total == 0:
        raise GraphkitError("the input spec yields no samples to calibrate on")
    if on_total is not None:
        on_total(total)
    ir_model = to_ir(model)  # the graph is read here and by `build`, never per sample
    names = tensors_to_observe(ir_model, tensors, keep_float)
    if not names:
        raise GraphkitError("the model has no tensors to calibrate (no Conv, Gemm or MatMul)")
    if histograms is None:
        histograms = canonical_method(method) != "minmax"
    seen = [0]

    def tick() -> None:
        seen[0] += 1
        if on_sample is not None:
            on_sample()

    stats = collect_statistics(
        model,
        spec,
        names,
        workers=workers,
        bins=bins,
        max_outputs_per_run=max_outputs_per_run,
        on_sample=tick,
        histograms=histograms,
        executor=executor,
        ray_address=ray_address,
    )
    groups = -(-len(names) // max_outputs_per_run) if max_outputs_per_run and histograms else 1

    def build(method: str, settings: dict[str, Any] | None = None) -> CalibrationTable:
        if not histograms and canonical_method(method) != "minmax":
            raise GraphkitError(f"method {method} needs histograms, collected without them")
        return _build_table(
            model,
            ir_model.graph,
            stats,
            method,
            settings,
            keep_float=keep_float,
            per_channel=per_channel,
            model_path="",
            data_source=describe_source(spec),
            num_samples=seen[0] // groups,
        )

    return stats, build


def calibrate(
    model: str | os.PathLike | onnx.ModelProto,
    spec: Any,
    method: str = "mse",
    settings: dict[str, Any] | None = None,
    *,
    workers: int = 1,
    limit: int | None = None,
    tensors: str | Sequence[str] = "quantizable",
    keep_float: Sequence[str] = (),
    per_channel: bool = True,
    bins: int = DEFAULT_BINS,
    max_outputs_per_run: int | None = None,
    on_sample: Callable[[], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> CalibrationTable:
    """Calibrate `model` on the samples of `spec` (a YAML path or InputSpec) for int8:
    thresholds and weight ranges only (`graphkit.quantize` makes the other decisions).

    method: mse (default), minmax, entropy (= entropy-trt), kl-ncnn, percentile; settings are the
    method's options (e.g. {"percentile": 99.99}). tensors: "quantizable" (inputs of Conv,
    ConvTranspose, Gemm, MatMul), "all" (every float tensor), or a list of names.
    """
    method = canonical_method(method)
    model, model_path = _load(model)
    spec = _load_spec(spec, limit)
    _, build = calibrate_statistics(
        model,
        spec,
        method=method,
        workers=workers,
        tensors=tensors,
        keep_float=keep_float,
        per_channel=per_channel,
        bins=bins,
        max_outputs_per_run=max_outputs_per_run,
        on_sample=on_sample,
        on_total=on_total,
        executor=executor,
        ray_address=ray_address,
    )
    table = build(method, settings)
    table.model_path = model_path
    return table


def methods() -> list[str]:
    return sorted(CALIBRATORS)


__all__ = [
    "build_table",
    "calibrate",
    "calibrate_statistics",
    "collect_statistics",
    "weight_entries",
]
