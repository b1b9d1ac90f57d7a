"""Per-tensor numeric diff of a reference (FP32) model against its quantized version.

Both models run on the same real inputs; every tensor present in both (matched by name)
is compared with streaming sums, so the memory cost is one image's activations no matter
how many images are used. ONNX against ncnn is compared at the outputs, in order, since
the converter renames everything inside.

Metrics per tensor: cosine similarity, SQNR in dB (10 log10 of signal over error power),
max |error| and relative L2 error, all over the concatenation of the images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphkit.errors import GraphkitError
from graphkit.metrics import RunningDiff


@dataclass
class TensorRow:
    """One compared tensor (reference name, and the quantized side's name if different)."""

    name: str
    quant_name: str
    op_type: str
    node: str
    index: int
    quantized: bool
    is_output: bool
    diff: RunningDiff = field(default_factory=RunningDiff)

    def as_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "quant_name": self.quant_name,
            "op_type": self.op_type,
            "node": self.node,
            "index": self.index,
            "quantized": self.quantized,
            "is_output": self.is_output,
        }
        d.update(self.diff.metrics())
        return d


@dataclass
class DiffReport:
    """All rows in network order, plus whatever the optional modes added."""

    ref: str
    quant: str
    mode: str
    samples: int
    rows: list[TensorRow]
    per_layer: list[dict[str, Any]] | None = None
    own: list[dict[str, Any]] | None = None  # each quantized layer alone on FP32 inputs
    histograms: dict[str, dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    def worst_first(self) -> list[TensorRow]:
        return sorted(self.rows, key=lambda r: (r.diff.sqnr_db, r.index))

    def to_dict(self) -> dict[str, Any]:
        sq = [r.diff.sqnr_db for r in self.rows if math.isfinite(r.diff.sqnr_db)]
        return {
            "ref": self.ref,
            "quant": self.quant,
            "mode": self.mode,
            "samples": self.samples,
            "summary": {
                "tensors": len(self.rows),
                "quantized_layers": sum(r.quantized for r in self.rows),
                "median_sqnr_db": float(np.median(sq)) if sq else None,
                "min_sqnr_db": float(min(sq)) if sq else None,
                "outputs": {r.name: r.diff.metrics() for r in self.rows if r.is_output},
            },
            "tensors": [r.as_dict() for r in self.rows],
            "per_layer": self.per_layer,
            "own": self.own,
            "histograms": self.histograms,
            "notes": self.notes,
        }


def match_tensors(ref, quant, outputs_only: bool = False) -> list[TensorRow]:
    """Rows for tensors both executors can produce: by name, or by output order across
    an ONNX/ncnn pair (whose names differ)."""
    ref_outs, q_outs = ref.outputs(), quant.outputs()
    ref_info = ref.tensor_info()
    q_info = quant.tensor_info()
    if ref.kind != quant.kind:
        if len(ref_outs) != len(q_outs):
            raise GraphkitError(
                f"the models have {len(ref_outs)} and {len(q_outs)} outputs; cannot pair them"
            )
        pairs = list(zip(ref_outs, pnnx_order(q_outs)))
    elif outputs_only:
        pairs = [(n, n) for n in ref_outs if n in q_outs]
    else:
        pairs = [(n, n) for n in ref_info if n in q_info or n in q_outs]
        pairs += [(n, n) for n in ref_outs if n in q_outs and n not in ref_info]
    if not pairs:
        raise GraphkitError("the two models share no tensor names; are they the same network?")
    if quant.kind == "onnx" and ref.kind == "onnx":
        from graphkit.evaluators.graphinfo import dequantized_views

        views = dequantized_views(quant.model)
        named = [(r, q, views.get(q, q)) for r, q in pairs]
    else:
        named = [(r, q, q) for r, q in pairs]
    rows = []
    for i, (rn, q_orig, qn) in enumerate(named):
        ri, qi = ref_info.get(rn), q_info.get(q_orig)
        rows.append(
            TensorRow(
                name=rn,
                quant_name=qn,
                op_type=(ri.op_type if ri else (qi.op_type if qi else "output")),
                node=(ri.node if ri else rn),
                index=ri.index if ri else (10**6 + i),
                quantized=bool(qi and qi.quantized),
                is_output=rn in ref_outs,
            )
        )
    rows.sort(key=lambda r: r.index)
    return rows


def pnnx_order(names: list[str]) -> list[str]:
    """pnnx names graph outputs out0, out1, ... in ONNX order; sort such names by number."""
    if all(n.startswith("out") and n[3:].isdigit() for n in names):
        return sorted(names, key=lambda n: int(n[3:]))
    return names


def _squeeze_like(ref: np.ndarray, q: np.ndarray) -> np.ndarray:
    """ncnn drops the batch axis and is channel-first; reorder q to ref's layout if needed."""
    if q.shape == ref.shape:
        return q
    rs = tuple(d for d in ref.shape if d != 1)
    qs = tuple(d for d in q.shape if d != 1)
    if rs == qs:
        return q.reshape(ref.shape)
    if (
        len(ref.shape) == 4
        and ref.shape[0] == 1
        and q.shape == (ref.shape[3], ref.shape[1], ref.shape[2])
    ):
        return q.transpose(1, 2, 0)[None]  # CHW from an NHWC model
    return q


def compare(
    ref,
    quant,
    samples: Iterable[dict[str, np.ndarray]] | Callable[[], Iterable[dict[str, np.ndarray]]],
    outputs_only: bool = False,
    histograms: bool = False,
    on_sample: Callable[[], None] | None = None,
    max_tensors_per_run: int | None = None,
    on_pass: Callable[[int, int], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> DiffReport:
    """Run both executors on every feeds dict and accumulate per-tensor metrics.

    With `histograms`, |x| statistics of every reference tensor are streamed too
    (graphkit.quant.observers.TensorStats) for the report's histogram view.
    `max_tensors_per_run` compares at most that many tensors per pass over the data (one
    pass per group, `samples` must then be a callable giving a fresh iterable): memory
    holds one group's tensors of both models instead of all of them, at the cost of
    running the models once per group. on_pass(i, k) is called before pass i of k.
    """
    if max_tensors_per_run is not None and max_tensors_per_run < 1:
        raise GraphkitError(f"--max-tensors-per-run must be at least 1, got {max_tensors_per_run}")
    rows = match_tensors(ref, quant, outputs_only)
    size = max_tensors_per_run or max(len(rows), 1)
    groups = [rows[i : i + size] for i in range(0, len(rows), size)] or [rows]
    if len(groups) > 1 and not callable(samples):
        raise GraphkitError("comparing in several passes needs samples as a callable")
    stats: dict[str, Any] = {}
    counts = []
    for i, group in enumerate(groups):
        if on_pass is not None:
            on_pass(i, len(groups))
        feeds_iter = samples() if callable(samples) else samples
        counts.append(_compare_group(ref, quant, group, feeds_iter, histograms, stats, on_sample))
        if len(groups) > 1:
            for ex in (ref, quant):  # the next group needs other sessions
                if hasattr(ex, "drop_sessions"):
                    ex.drop_sessions()
    n = counts[0]
    if n == 0:
        raise GraphkitError("the data spec produced no samples to compare on")
    if any(c != n for c in counts):
        raise GraphkitError(f"the data gave {counts} samples in successive passes")
    report = DiffReport(ref.label, quant.label, f"{ref.kind}-vs-{quant.kind}", n, rows)
    if len(groups) > 1:
        report.notes.append(f"compared in {len(groups)} passes of at most {size} tensors")
    if histograms:
        report.histograms = {name: histogram_view(s) for name, s in stats.items()}
    return report


def _compare_group(ref, quant, rows, samples, histograms, stats, on_sample) -> int:
    """One pass over the data for `rows`; returns the number of samples seen."""
    ref_names = [r.name for r in rows]
    q_names = [r.quant_name for r in rows]
    n = 0
    for feeds in samples:
        a = ref.run(feeds, ref_names)
        b = quant.run(_feeds_for(quant, feeds), q_names)
        for row in rows:
            ra, qb = a[row.name], b[row.quant_name]
            row.diff.update(ra, _squeeze_like(ra, qb), row.name)
        if histograms:
            from graphkit.quant.observers import collect_stats

            collect_stats([a], stats=stats)
        del a, b
        n += 1
        if on_sample is not None:
            on_sample()
    return n


def _feeds_for(executor, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a single input when the quantized side calls it differently (ncnn 'in0')."""
    names = executor.inputs()
    if set(names) == set(feeds) or len(names) != 1 or len(feeds) != 1:
        return feeds
    return {names[0]: next(iter(feeds.values()))}


def histogram_view(stats, bins: int = 128) -> dict[str, Any]:
    """A compact |x| histogram for the report: `bins` counts over [0, absmax]."""
    counts, edges = stats.histogram(bins=bins)
    return {
        "absmax": stats.absmax,
        "min": None if stats.count == 0 else stats.min,
        "max": None if stats.count == 0 else stats.max,
        "count": stats.count,
        "counts": [float(c) for c in counts],
        "upper": float(edges[-1]),
    }


def run_diff(
    ref_path: str,
    quant_path: str,
    data,
    limit: int | None = None,
    per_layer: bool = False,
    per_layer_samples: int = 8,
    own: bool = True,
    histograms: bool = False,
    table: str | None = None,
    on_sample: Callable[[], None] | None = None,
    on_layer: Callable[[str], None] | None = None,
    on_layer_total: Callable[[int], None] | None = None,
    max_tensors_per_run: int | None = None,
    on_pass: Callable[[int, int], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> DiffReport:
    """Compare REF against QUANT over the data spec's samples (see module docstring).

    REF/QUANT are ONNX files (FP32 and Q/DQ) or ncnn .param files. Two ONNX models also
    get each quantized layer's own error (`own_error`, on the first `per_layer_samples`
    samples; `own=False` skips it). `per_layer` adds the
    one-layer-at-a-time error of every quantized layer (ONNX Q/DQ only, on the first
    `per_layer_samples` samples); `histograms` streams |x| histograms of every reference
    tensor, and `table` (a graphkit calibration table) marks each tensor's threshold.
    `max_tensors_per_run` bounds memory by comparing the tensors in groups (see compare).
    executor="ray" runs the per-layer models as Ray tasks (groups of layers).
    """
    from graphkit.data import check_against_model, iter_samples, load_input_spec
    from graphkit.evaluators.executors import open_executor

    spec = data if hasattr(data, "source") else load_input_spec(data)
    if limit is not None:
        spec = spec.with_source(limit=limit)
    cal = None
    if table is not None:
        from graphkit.quant.table import CalibrationTable

        cal = CalibrationTable.load(table)
        histograms = True
    ref = open_executor(ref_path)
    quant = open_executor(quant_path)
    for ex in (ref, quant):
        if ex.kind == "onnx":
            check_against_model(spec, ex.model)
    if per_layer and not (ref.kind == quant.kind == "onnx"):
        raise GraphkitError("per-layer mode needs an FP32 ONNX model and its Q/DQ ONNX version")
    report = compare(
        ref,
        quant,
        lambda: (s.feeds for s in iter_samples(spec)),
        outputs_only=ref.kind != quant.kind,
        histograms=histograms,
        on_sample=on_sample,
        max_tensors_per_run=max_tensors_per_run,
        on_pass=on_pass,
    )
    if ref.kind != quant.kind:
        report.notes.append(
            "ONNX and ncnn name tensors differently: compared at the outputs, paired in order"
        )
    if report.histograms is not None and cal is not None:
        for name, h in report.histograms.items():
            entry = cal.activations.get(name)
            h["threshold"] = entry.amax if entry is not None else None
        report.notes.append(f"thresholds from calibration table {table} ({cal.method})")
        if cal.equalization:
            report.notes.append(
                f"the plan equalized {len(cal.equalization)} Conv pair(s): the thresholds of "
                "the tensors between them are the rescaled model's, not the reference's"
            )
    from itertools import islice

    if own and ref.kind == quant.kind == "onnx":
        from graphkit.evaluators.own_error import own_errors

        feeds = (s.feeds for s in islice(iter_samples(spec), per_layer_samples))
        rows = own_errors(ref.model, quant.model, feeds)
        if rows:
            report.own = rows
            report.notes.append(
                f"own error: each quantized layer run alone on the FP32 model's inputs, "
                f"first {min(per_layer_samples, report.samples)} samples"
            )
    if per_layer:
        from graphkit.evaluators.per_layer import per_layer_errors

        layer_feeds = [s.feeds for s in islice(iter_samples(spec), per_layer_samples)]
        if executor == "ray":
            from graphkit.evaluators.per_layer import per_layer_errors_ray

            report.per_layer = per_layer_errors_ray(
                ref.model,
                quant.model,
                layer_feeds,
                on_layer=on_layer,
                address=ray_address,
                on_total=on_layer_total,
            )
        else:
            report.per_layer = per_layer_errors(
                ref.model, quant.model, layer_feeds, on_layer=on_layer, on_total=on_layer_total
            )
        report.notes.append(f"per-layer errors measured on {len(layer_feeds)} samples")
    return report
