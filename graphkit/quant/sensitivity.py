"""Which layers hurt int8 accuracy most, and which to keep float.

`sensitivity` quantizes one layer at a time (every other layer float, the same table and
Q/DQ as `insert_qdq` writes) and measures the SQNR of the model outputs against FP32 on a
few samples: a layer's own damage at the outputs, whatever the errors of the other layers.
`choose_keep_float` keeps the most damaging layers float, either a fixed number of them or
as many as needed to reach an output SQNR target, checking the whole int8 model as it goes
(errors of separate layers do not add exactly).

Scoring at the outputs (not at each layer's own output) is what makes the ranking a task
ranking: a layer whose error is large but washed out downstream ranks low; the last conv
of a heatmap head, whose error is the output error, ranks high.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Self

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphkit.errors import GraphkitError
from graphkit.irgraph import name_of, reads, to_ir
from graphkit.metrics import sqnr_db, squared_error
from graphkit.quant.collect import quantized_layers, spec_samples
from graphkit.quant.suffix import boundaries, chunks, suffix_model
from graphkit.quant.table import CalibrationTable
from graphkit.quant.variants import qdq_variants, scoring_candidates
from graphkit.runtime.ort import make_session, output_infos, with_outputs

Feeds = dict[str, np.ndarray]
# the float tensors a scorer keeps for suffix runs, at most (all samples)
SUFFIX_CACHE_BYTES = 1 << 30


def _check_outputs(model: onnx.ModelProto, outputs: Sequence[str] | None) -> list[str]:
    names = [o.name for o in model.graph.output]
    if not outputs:
        return names
    known = set(names) | {t for n in model.graph.node for t in n.output}
    for o in outputs:
        if o not in known:
            raise GraphkitError(
                f"'{o}' is not an output of the model (outputs: {', '.join(names)})"
            )
    return list(outputs)


NON_SMOOTH_OPS = {
    "ArgMax", "ArgMin", "TopK", "Gather", "GatherND", "GatherElements", "Cast", "Floor",
    "Ceil", "Round", "NonMaxSuppression", "Equal", "Greater", "Less", "Where",
}  # fmt: skip


def head_tensors(model: onnx.ModelProto, outputs: Sequence[str] | None = None) -> list[str]:
    """What to score: each output, or, when it is decoded in the graph, its heads.

    An output reached from the last quantizable layers (Conv, ConvTranspose, Gemm,
    MatMul) through a non-smooth op (ArgMax, Gather, Cast... MoveNet's in-graph decoding)
    is replaced by those layers' outputs: scoring a decoded output, a small error either
    does nothing or flips a peak on one of the few samples; scoring the heads keeps the
    score proportional to the damage."""
    from graphkit.quant.weights import QUANTIZED_OPS

    graph = to_ir(model).graph
    values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
    # values that depend on the input values (not only on shapes)
    data = set(graph.inputs)
    for node in graph:  # graph order is topological
        if node.op_type not in ("Shape", "Size") and any(v in data for v in reads(node)):
            data.update(node.outputs)
    result: list[str] = []
    for out in _check_outputs(model, outputs):
        heads: list[str] = []
        seen: set[ir.Value] = set()
        stack, rough = [values[out]], False
        while stack:
            v = stack.pop()
            producer = v.producer()
            if v in seen or producer is None:
                continue
            seen.add(v)
            if producer.op_type in QUANTIZED_OPS:
                heads.append(name_of(v))
                continue
            rough |= producer.op_type in NON_SMOOTH_OPS
            stack.extend(reversed([i for i in reads(producer) if i in data]))
        for t in heads if rough and heads else [out]:
            if t not in result:
                result.append(t)
    return result


class OutputScorer:
    """SQNR of a candidate model's outputs against the float model's, on fixed samples.

    The float outputs are computed once. The score of a candidate is the lowest SQNR (dB)
    over the scored outputs, each summed over all samples: 10 log10(sum y^2 / sum e^2).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        samples: Sequence[Feeds],
        outputs: Sequence[str] | None = None,
        threads: int | None = None,
    ):
        if not samples:
            raise GraphkitError("sensitivity analysis needs at least one sample")
        self.outputs = _check_outputs(model, outputs)
        self.samples = list(samples)
        self.threads = threads
        self._graph_outputs = [o.name for o in model.graph.output] == self.outputs
        self._infos = {} if self._graph_outputs else output_infos(model, self.outputs)
        self.memory: dict[str, ort.OrtValue] | None = None  # the bytes of weight stubs
        sess = self._session(model)
        self.reference = [sess.run(self.outputs, f) for f in self.samples]
        self.signal = [
            sum(float(np.sum(np.square(r[k], dtype=np.float64))) for r in self.reference)
            for k in range(len(self.outputs))
        ]
        self._float: list[Feeds] | None = None  # float tensors candidates may start from

    def float_tensors(
        self, model: onnx.ModelProto, tensors: Sequence[str], samples: Sequence[Feeds]
    ) -> list[Feeds]:
        """The float `tensors` of `model` (and the feeds) on each of `samples`."""
        inputs = {i.name for i in model.graph.input}
        names = [t for t in tensors if t not in inputs]
        if not names:
            return [dict(feeds) for feeds in samples]
        sess = make_session(with_outputs(model, names), self.threads, as_written=True)
        return [{**feeds, **dict(zip(names, sess.run(names, feeds)))} for feeds in samples]

    def with_float(
        self, model: onnx.ModelProto, tensors: Sequence[str], known: Sequence[Feeds] = ()
    ) -> Self:
        """This scorer keeping the float `tensors` of `model` for every sample, so that a
        candidate differing from the float model only downstream of them runs from there
        (`graphkit.quant.suffix`); `known`: those of the first samples, already computed."""
        out = copy.copy(self)
        rest = self.float_tensors(model, tensors, self.samples[len(known) :])
        out._float = [*known, *rest]
        return out

    def with_memory(self, memory: dict[str, ort.OrtValue] | None) -> Self:
        """This scorer running candidates whose initializers are `memory_stub`s
        (`graphkit.quant.variants.scoring_candidates`) with these bytes."""
        out = copy.copy(self)
        out.memory = memory
        return out

    def errors(self, candidate: onnx.ModelProto, count: int | None = None) -> list[float]:
        """Squared error of the first `count` scored outputs (default all), each summed
        over the samples: from the kept float tensors where the candidate can start there."""
        scored = self.outputs[: count or len(self.outputs)]
        noise = [0.0] * len(scored)
        kept, part = self._float, None
        if kept is not None:
            dtypes = {o: self.reference[0][k].dtype for k, o in enumerate(scored)}
            part = suffix_model(candidate, scored, kept[0], dtypes)
        if kept is not None and part is not None:
            model, inputs, computed = part
            if model is None:  # changes none of the scored outputs
                return noise
            at = [scored.index(o) for o in computed]
            sess = make_session(model, threads=self.threads, as_written=True, memory=self.memory)
            runs = (sess.run(computed, {t: f[t] for t in inputs}) for f in kept)
        else:
            at = list(range(len(scored)))
            sess = self._session(candidate)
            runs = (sess.run(scored, feeds) for feeds in self.samples)
        for got, ref in zip(runs, self.reference):
            for k, b in zip(at, got):
                noise[k] += squared_error(ref[k], b)
        return noise

    def _session(self, model: onnx.ModelProto):
        """Candidates (Q/DQ) run as written: the score is the model's, not one CPU's; the
        float reference at the same level, so a float candidate scores inf."""
        if not self._graph_outputs:
            model = with_outputs(model, self.outputs, infos=self._infos)
        return make_session(model, threads=self.threads, as_written=True, memory=self.memory)

    def subset(self, count: int) -> Self:
        """This scorer on its first `count` samples only (the FP32 outputs reused)."""
        out = copy.copy(self)
        out.samples, out.reference = self.samples[:count], self.reference[:count]
        out._float = None if self._float is None else self._float[:count]
        out.signal = [
            sum(float(np.sum(np.square(r[k], dtype=np.float64))) for r in out.reference)
            for k in range(len(self.signal))
        ]
        return out

    def __call__(self, candidate: onnx.ModelProto) -> float:
        return min(sqnr_db(s, n) for s, n in zip(self.signal, self.errors(candidate)))


def sensitivity(
    model: onnx.ModelProto,
    samples: Sequence[Feeds] | OutputScorer,
    table: CalibrationTable,
    *,
    layers: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    keep_float: Sequence[str] = (),
    base: onnx.ModelProto | None = None,
    on_layer: Callable[[str, float], None] | None = None,
    variants: Callable[[Sequence[str]], onnx.ModelProto] | None = None,
) -> list[tuple[str, float]]:
    """(node, output SQNR dB with only that node quantized), most sensitive (lowest) first.

    `layers` restricts the analysis (default: every layer the table quantizes). `base` is
    the model Q/DQ is inserted into when it differs from the float reference `model`
    (weights already rounded by `graphkit.quant.refine.optimize_weights`). `variants`:
    `qdq_variants(model, table, base)` when the caller has it already."""

    scorer = samples if isinstance(samples, OutputScorer) else OutputScorer(model, samples, outputs)
    all_layers = quantized_layers(model, table, keep_float)
    picked = all_layers if layers is None else [n for n in all_layers if n in set(layers)]
    if not picked:
        raise GraphkitError("the table quantizes no layer of this model to rank")
    if variants is None:
        variants = qdq_variants(model, table, base)
    candidate, memory = scoring_candidates(variants)
    scorer = scorer.with_memory(memory)
    rows = []
    for group, scored in _from_float(model, scorer, picked):
        for name in group:
            others = [n for n in all_layers if n != name]
            score = scored(candidate([*keep_float, *others]))
            rows.append((name, score))
            if on_layer is not None:
                on_layer(name, score)
    return sorted(rows, key=lambda r: (r[1], r[0]))


def _from_float(model: onnx.ModelProto, scorer: OutputScorer, layers: Sequence[str]):
    """(layers, a scorer for them): a candidate with one layer int8 equals the float model
    upstream of it, so it runs from the float tensors there (`graphkit.quant.suffix`),
    kept for a group of neighbouring layers at a time (SUFFIX_CACHE_BYTES over the
    samples). Layers the graph does not name come last, run whole."""
    bounds = boundaries(model, layers)
    if bounds:
        wanted = sorted({t for reads in bounds.values() for t in reads})
        first = scorer.float_tensors(model, wanted, scorer.samples[:1])
        sizes = {t: a.nbytes for t, a in first[0].items()}
        groups = chunks(bounds, sizes, SUFFIX_CACHE_BYTES // len(scorer.samples))
        for group, tensors in groups:
            # one group keeps every tensor: the first sample's are those just computed
            known = first if len(groups) == 1 else []
            yield group, scorer.with_float(model, tensors, known)
    rest = [n for n in layers if n not in bounds]
    if rest:
        yield rest, scorer


@dataclass
class KeepFloatChoice:
    """What `choose_keep_float` decided and why."""

    keep_float: list[str]
    sqnr_db: float  # output SQNR of the int8 model with keep_float float
    baseline_db: float  # output SQNR with every layer int8 (plus the user's keep_float)
    ranking: list[tuple[str, float]]
    steps: list[tuple[str, float]] = field(default_factory=list)  # (layer added, SQNR after)


def choose_keep_float(
    model: onnx.ModelProto,
    samples: Sequence[Feeds] | OutputScorer,
    table: CalibrationTable,
    *,
    count: int | None = None,
    target_db: float | None = None,
    max_layers: int | None = None,
    outputs: Sequence[str] | None = None,
    keep_float: Sequence[str] = (),
    ranking: list[tuple[str, float]] | None = None,
    base: onnx.ModelProto | None = None,
    on_step: Callable[[str, float], None] | None = None,
) -> KeepFloatChoice:
    """The layers to keep float: the `count` most sensitive, or as few as reach `target_db`.

    With `target_db`, layers are tried in ranking order (at most `max_layers`, default
    all) and one is kept only if it raises the whole int8 model's output SQNR; the search
    stops once the target is met. With `count`, the same greedy check runs until `count`
    layers are kept (a layer that does not help is skipped). `base`: as for `sensitivity`."""

    if count is None and target_db is None:
        raise GraphkitError("choose_keep_float needs a layer count or an SQNR target")
    if count is not None and count < 0:
        raise GraphkitError(f"the number of layers to keep float must be >= 0, got {count}")
    scorer = samples if isinstance(samples, OutputScorer) else OutputScorer(model, samples, outputs)
    if ranking is None:
        ranking = sensitivity(model, scorer, table, keep_float=keep_float, base=base)
    chosen: list[str] = []
    candidate = qdq_variants(model, table, base)
    best = scorer(candidate(list(keep_float)))
    baseline = best
    steps: list[tuple[str, float]] = []
    limit = count if count is not None else (max_layers if max_layers is not None else len(ranking))
    for name, _ in ranking:
        if len(chosen) >= limit or (target_db is not None and best >= target_db):
            break
        score = scorer(candidate([*keep_float, *chosen, name]))
        if score > best:
            chosen.append(name)
            best = score
            steps.append((name, score))
            if on_step is not None:
                on_step(name, score)
    return KeepFloatChoice(chosen, best, baseline, ranking, steps)


def with_keep_float(table: CalibrationTable, nodes: Sequence[str]) -> CalibrationTable:
    """A copy of the table with `nodes` added to keep_float and their (unshared) weight
    entries and corrected biases dropped."""
    gone = set(nodes)
    return replace(  # every other field as it was (equalization, reasons, recipe...)
        table,
        settings=dict(table.settings),
        activations=dict(table.activations),
        weights={k: w for k, w in table.weights.items() if w.node not in gone},
        keep_float=list(dict.fromkeys([*table.keep_float, *nodes])),
        biases={n: b for n, b in table.biases.items() if n not in gone},
    )


def auto_keep_float(
    model: onnx.ModelProto,
    spec,
    table: CalibrationTable,
    *,
    count: int | None = None,
    target_db: float | None = None,
    samples: int = 8,
    skip: int = 0,
    keep_float: Sequence[str] = (),
    base: onnx.ModelProto | None = None,
    on_step: Callable[[str, float], None] | None = None,
) -> tuple[CalibrationTable, KeepFloatChoice]:
    """Rank the table's layers on `samples` samples of the spec after the first `skip`
    (scoring `head_tensors` of the outputs its decode section reads) and return the
    table with the chosen layers kept float. `skip` keeps the scored samples apart from
    the ones weights were rounded on (`base`)."""
    feeds, outputs = spec_samples(spec, samples, skip)
    scorer = OutputScorer(model, feeds, head_tensors(model, outputs))
    choice = choose_keep_float(
        model,
        scorer,
        table,
        count=count,
        target_db=target_db,
        keep_float=keep_float,
        base=base,
        on_step=on_step,
    )
    out = with_keep_float(table, choice.keep_float)
    out.settings["auto_keep_float"] = {
        "count": count,
        "target_db": target_db,
        "samples": len(feeds),
        "outputs": scorer.outputs,
        "sqnr_db_before": round(choice.baseline_db, 3),
        "sqnr_db_after": round(choice.sqnr_db, 3),
        "chosen": choice.keep_float,
    }
    return out, choice


__all__ = [
    "KeepFloatChoice",
    "OutputScorer",
    "auto_keep_float",
    "choose_keep_float",
    "head_tensors",
    "quantized_layers",
    "sensitivity",
    "with_keep_float",
]
