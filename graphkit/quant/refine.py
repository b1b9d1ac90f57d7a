"""Refine activation thresholds against the error of the layers that read them.

A calibrator picks a tensor's threshold from the tensor alone (its range, its histogram).
What matters is the output of the layer that reads it: ncnn2table's "eq" step searches
scales around the KL one for the best cosine of the layer output. Here, for each
calibrated activation, candidate thresholds (the table's amax times `factors`, plus any
extra candidates such as other methods' thresholds) are tried and the one giving the
lowest squared error of its consumers' outputs is kept:

    err(a) = sum over samples and consumers of || L(Qa(x), Qw(W)) - L(x, W) ||^2

with x the float input (float upstream), Qa int8 fake quantization at threshold a and Qw
the table's int8 weights. The table's own threshold is always a candidate, so the
refined error of every tensor is at most the original one (ties keep the original).

Cost: one float pass per sample exposing the calibrated tensors (one sample's tensors in
memory at a time), then per tensor one small onnxruntime session that runs its consumers
once per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import as_tensor, copy_node, name_of, set_initializer, to_ir, to_proto
from graphkit.quant.collect import layer_activations, quantizable, quantized_names, spec_samples
from graphkit.quant.deploy import channel_scales, extreme_pins
from graphkit.quant.layer_view import LayerView, view_of
from graphkit.quant.qdq import MIN_OPSET, add_qdq, ensure_opset, insert_qdq
from graphkit.quant.table import QMAX, ActivationEntry, CalibrationTable
from graphkit.runtime.ort import make_session, with_outputs

Feeds = dict[str, np.ndarray]
DEFAULT_FACTORS = tuple(float(f) for f in np.geomspace(0.5, 2.0, 13))


@dataclass
class Refinement:
    """One tensor's search: the error at the original threshold and at the chosen one."""

    tensor: str
    amax_before: float
    amax_after: float
    error_before: float
    error_after: float


def _consumers(graph: ir.Graph, table: CalibrationTable) -> dict[str, list[ir.Node]]:
    """Tensor -> quantized nodes reading it (as insert_qdq quantizes them)."""
    out: dict[str, list[ir.Node]] = {}
    for node in quantizable(graph, table.keep_float):
        acts = layer_activations(node)
        if not acts or any(name_of(v) not in table.activations for _, v in acts):
            continue
        if len(acts) != 1:  # MatMul of two activations: its error depends on two scales
            continue
        out.setdefault(name_of(acts[0][1]), []).append(node)
    return out


_FLOAT = ir.TensorType(ir.DataType.FLOAT)


def _node(op_type: str, inputs: list[ir.Value | None], output: str, **ints: int) -> ir.Node:
    attrs = [ir.AttrInt64(k, v) for k, v in ints.items()]
    node = ir.Node("", op_type, inputs, attributes=attrs, num_outputs=1)
    node.outputs[0].name = output
    return node


def _constant(array: np.ndarray, name: str) -> ir.Value:
    tensor = as_tensor(array, name)
    return ir.Value(
        name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape), const_value=tensor
    )


class _LayerModels:
    """Small models scoring one activation's thresholds on the layers that read it, cut
    from the Q/DQ model (its dequantized int8 weights) of the float model."""

    def __init__(self, qdq: ir.Model):
        self.qdq = qdq
        self.by_name = {n.name: n for n in qdq.graph}

    def build(self, tensor: str, nodes: list[ir.Node]) -> onnx.ModelProto:
        """x (float), amax (scalar), ref_i (float outputs) -> err_i = sum (L_i(Qa(x)) - ref_i)^2.

        The consumers keep the Q/DQ model's dequantized int8 weights (and everything else
        constant they read), only their activation input is replaced."""
        x = ir.Value(name="x", type=_FLOAT)
        amax = ir.Value(name="amax", type=_FLOAT, shape=ir.Shape([]))
        qmax, zp = (
            _constant(np.array(QMAX, np.float32), "qmax"),
            _constant(np.array(0, np.int8), "zp"),
        )
        scale = _node("Div", [amax, qmax], "scale")
        xq = _node("QuantizeLinear", [x, scale.outputs[0], zp], "xq")
        xdq = _node("DequantizeLinear", [xq.outputs[0], scale.outputs[0], zp], "xdq")
        body: list[ir.Node] = [scale, xq, xdq]
        inits = [qmax, zp]
        inputs, outputs = [x, amax], []
        copies: dict[ir.Value, ir.Value] = {}
        cloned: dict[ir.Node, ir.Node] = {}

        def pull(value: ir.Value | None) -> ir.Value | None:
            """The copy of the constant sub-graph (DQ of int8 weights) computing `value`."""
            if value is None or value in copies:
                return None if value is None else copies[value]
            producer = value.producer()
            if value.is_initializer() or producer is None:
                new = ir.Value(
                    name=value.name,
                    type=value.type,
                    shape=value.shape,
                    const_value=value.const_value,
                )
                if value.is_initializer():
                    inits.append(new)
            else:
                if producer not in cloned:
                    cloned[producer] = copy_node(
                        producer,
                        [pull(i) for i in producer.inputs],
                        producer.name or "",
                        [name_of(o) for o in producer.outputs],
                    )
                    body.append(cloned[producer])
                new = cloned[producer].outputs[value.index() or 0]
            copies[value] = new
            return new

        for k, node in enumerate(nodes):
            q = self.by_name.get(node.name, node)
            layer_inputs = [
                xdq.outputs[0] if f is not None and f.name == tensor else pull(v)
                for f, v in zip(node.inputs, q.inputs)
            ]
            layer = copy_node(q, layer_inputs, f"layer{k}", [name_of(q.outputs[0])])
            layer.outputs[0].name = f"y{k}"
            ref = ir.Value(name=f"ref{k}", type=_FLOAT)
            inputs.append(ref)
            d = _node("Sub", [layer.outputs[0], ref], f"d{k}")
            sq = _node("Mul", [d.outputs[0], d.outputs[0]], f"s{k}")
            err = _node("ReduceSum", [sq.outputs[0]], f"err{k}", keepdims=0)
            err.outputs[0].type, err.outputs[0].shape = _FLOAT, ir.Shape([])
            body += [layer, d, sq, err]
            outputs.append(err.outputs[0])
        opsets = dict(self.qdq.opset_imports)
        graph = ir.Graph(
            inputs, outputs, nodes=body, initializers=inits, opset_imports=opsets, name="refine"
        )
        return to_proto(ir.Model(graph, ir_version=self.qdq.ir_version))


def refine_thresholds(
    model: onnx.ModelProto,
    samples: Sequence[Feeds],
    table: CalibrationTable,
    *,
    factors: Sequence[float] = DEFAULT_FACTORS,
    candidates: dict[str, Sequence[float]] | None = None,
    tensors: Sequence[str] | None = None,
    on_tensor: Callable[[Refinement], None] | None = None,
) -> tuple[CalibrationTable, list[Refinement]]:
    """A copy of `table` whose activation thresholds minimize their consumers' output error.

    `candidates` adds absolute thresholds per tensor (e.g. other calibrators' picks, which
    makes this a per-tensor method choice); `tensors` limits the search."""
    if not samples:
        raise GraphkitError("threshold refinement needs at least one sample")
    if any(not np.isfinite(f) or f <= 0 for f in factors):
        raise GraphkitError("refinement factors must be positive numbers")
    consumers = _consumers(to_ir(model).graph, table)
    if tensors is not None:
        consumers = {t: n for t, n in consumers.items() if t in set(tensors)}
    if not consumers:
        raise GraphkitError("the table quantizes no layer input that can be refined")
    qdq = to_ir(ensure_opset(model))
    add_qdq(qdq, table)  # what insert_qdq makes, kept on the IR to cut the layers from
    # float inputs and float outputs of every consumer, one sample at a time
    need = list(consumers)
    outs = {t: [name_of(n.outputs[0]) for n in nodes] for t, nodes in consumers.items()}
    exposed = list(dict.fromkeys(need + [o for v in outs.values() for o in v]))
    graph_inputs = {i.name for i in model.graph.input}
    run_names = [t for t in exposed if t not in graph_inputs]
    sess = make_session(with_outputs(model, run_names), optimize=False)
    cut = _LayerModels(qdq)
    sessions = {
        t: make_session(cut.build(t, nodes), as_written=True) for t, nodes in consumers.items()
    }
    trial: dict[str, list[float]] = {}
    for t in consumers:
        base = table.activations[t].amax
        values = [base * f for f in factors] + list((candidates or {}).get(t, ()))
        values = [v for v in dict.fromkeys([base, *values]) if np.isfinite(v) and v > 0]
        trial[t] = values
    errors = {t: np.zeros(len(v)) for t, v in trial.items()}
    for feeds in samples:
        got = dict(zip(run_names, sess.run(run_names, feeds)))
        got.update({k: v for k, v in feeds.items() if k in need})
        for t, s in sessions.items():
            x = np.asarray(got[t], np.float32)
            refs = {f"ref{k}": got[o] for k, o in enumerate(outs[t])}
            for j, a in enumerate(trial[t]):
                res = s.run(None, {"x": x, "amax": np.array(a, np.float32), **refs})
                errors[t][j] += float(sum(np.sum(r, dtype=np.float64) for r in res))
        del got
    refined = dict(table.activations)
    report = []
    for t, values in trial.items():
        err = errors[t]
        best = int(np.argmin(err))
        if not err[best] < err[0]:  # ties and NaN keep the calibrator's threshold
            best = 0
        old = table.activations[t]
        refined[t] = ActivationEntry(
            amax=float(values[best]), min=old.min, max=old.max, consumers=old.consumers
        )
        r = Refinement(t, float(values[0]), float(values[best]), float(err[0]), float(err[best]))
        report.append(r)
        if on_tensor is not None:
            on_tensor(r)
    out = replace(  # every other field as it was (weights, biases, equalization...)
        table,
        settings={**table.settings, "refined": {"factors": list(factors), "samples": len(samples)}},
        activations=refined,
        weights=dict(table.weights),
        keep_float=list(table.keep_float),
    )
    return out, report


# ---------------------------------------------------------------------------------------
# Weight rounding against the layer output (GPTQ-style error feedback)


@dataclass
class WeightRefinement:
    """One layer's weights: output squared error (on the sampled inputs) before and after."""

    node: str
    error_before: float
    error_after: float


def _rounding_error(q: np.ndarray, scale: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Output squared error of integer weights q (groups, rows, cols) on the sampled
    patches, per group: (W - D) sum(x x^T) (W - D)^T, D = q * scale."""
    d = w - q * scale[..., None]
    return np.sum((d @ h) * d, axis=(1, 2))


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U upper triangular with U^T U = H^-1, for a batch of positive definite H.

    With J the index reversal and L the lower Cholesky factor of J H J, H^-1 = J L^-T L^-1 J
    = U^T U for U = J L^-1 J: one Cholesky and one triangular inverse, half the time of
    inverting H first (a ResNet-50's 4608-column Conv: 4.2 -> 2.2 s), the same U to 1e-15."""
    lower = np.linalg.cholesky(h[..., ::-1, ::-1])
    return np.triu(_lower_inverse(lower)[..., ::-1, ::-1])


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of lower triangular matrices by halves: [[A, 0], [B, C]]^-1 =
    [[A^-1, 0], [-C^-1 B A^-1, C^-1]], so the work is matrix products."""
    n = lower.shape[-1]
    if n <= 64:
        return np.linalg.inv(lower)
    k = n // 2
    a = _lower_inverse(lower[..., :k, :k])
    c = _lower_inverse(lower[..., k:, k:])
    out = np.empty_like(lower)
    out[..., :k, k:] = 0.0
    out[..., :k, :k] = a
    out[..., k:, k:] = c
    out[..., k:, :k] = -c @ (lower[..., k:, :k] @ a)
    return out


def _gptq(
    w: np.ndarray,
    h: np.ndarray,
    scale: np.ndarray,
    damp: float,
    pins: np.ndarray | None = None,
    block: int = 128,
) -> np.ndarray:
    """Integer weights for `w` (groups, rows, cols) with per-row `scale` (groups, rows)
    that keep (w - q*s) H (w - q*s)^T small in every group: quantize column by column,
    pushing each column's rounding error onto the columns not yet quantized (GPTQ /
    optimal brain quantization). All groups at once: a depthwise Conv is hundreds of
    one-row groups. `pins` (like w, NaN where free) fixes some integers: the others
    absorb their error (`deploy.extreme_pins`: what the shipped weights must hold)."""
    groups, _, cols = w.shape
    h = h.copy()
    diag = np.arange(cols)
    d = h[:, diag, diag]
    h[:, diag, diag] = np.where(d == 0, 1.0, d)  # dead inputs
    mean = np.maximum(h[:, diag, diag].mean(axis=1), 1e-12)
    h[:, diag, diag] += damp * mean[:, None]
    try:
        hinv = _upper_cholesky_of_inverse(h)
    except np.linalg.LinAlgError:
        if groups == 1:
            q = np.clip(np.round(w / scale[..., None]), -QMAX, QMAX)
            return q if pins is None else np.where(np.isnan(pins), q, pins)
        return np.concatenate(
            [
                _gptq(
                    w[g : g + 1],
                    h[g : g + 1],
                    scale[g : g + 1],
                    0.0,
                    None if pins is None else pins[g : g + 1],
                    block,
                )
                for g in range(groups)
            ]
        )
    w = w.copy()
    q = np.zeros_like(w)
    for b0 in range(0, cols, block):  # lazy batch updates: one matmul per block of columns
        b1 = min(b0 + block, cols)
        wb = w[:, :, b0:b1].copy()
        errs = np.zeros_like(wb)
        hb = hinv[:, b0:b1, b0:b1]
        for i in range(b1 - b0):
            qi = np.clip(np.round(wb[:, :, i] / scale), -QMAX, QMAX)
            if pins is not None:
                fixed = pins[:, :, b0 + i]
                qi = np.where(np.isnan(fixed), qi, fixed)
            q[:, :, b0 + i] = qi
            err = (wb[:, :, i] - qi * scale) / hb[:, i, i, None]
            wb[:, :, i + 1 :] -= err[:, :, None] * hb[:, None, i, i + 1 :]
            errs[:, :, i] = err
        w[:, :, b1:] -= errs @ hinv[:, b0:b1, b1:]
    return q


# Hessians of the Convs whose patches are summed in one pass over the samples: at most this
# many bytes together (float32), so a model with hundreds of wide Convs takes several passes
# instead of all the memory (HRNet-W32 held 2 GB of float64 Hessians at once before)
HESSIAN_BUDGET_BYTES = 1 << 30
# layers whose rows (a ConvTranspose's: per phase block) are longer keep nearest rounding:
# GPTQ's Cholesky costs cols^3 and the Hessian cols^2. A ResNet-50's widest 3x3 conv (4608
# columns) takes 2 s; SimpleBaseline's first deconv (4 blocks of 8192) added 65 s and 2.9 GB
# to the whole plan's 75 s, RTMPose's 7x7 head conv over 512 channels (25088) minutes
MAX_COLUMNS = 4608
# blocks at least this wide are rounded in float32 (GPTQ's own precision): a ResNet-50's
# rounding 32.5 -> 24.1 s (its 2304- and 4608-column convs: Cholesky, triangular inverse
# and column loop), the summed output error the same to 1e-5; narrower blocks (every layer
# of the shared models) gain nothing from it and stay float64
FLOAT32_FROM_COLUMNS = 2048


class _Layer(NamedTuple):
    """A layer whose weights are rounded: its input tensor, its rows-times-inputs view
    and its place among them (seeds its input samples)."""

    node: ir.Node
    source: str
    view: LayerView
    order: int


def _hessian_groups(picked: list[_Layer], budget: int) -> list[list[_Layer]]:
    """`picked` split in graph order into groups whose Hessians (groups x cols^2
    float32 each) stay under `budget` bytes (one layer may be over it alone)."""
    out: list[list[_Layer]] = [[]]
    used = 0
    for item in picked:
        size = item.view.group * sum(len(c) ** 2 for _, c in item.view.blocks()) * 4
        if out[-1] and used + size > budget:
            out.append([])
            used = 0
        out[-1].append(item)
        used += size
    return out


def _hessians(
    model: onnx.ModelProto,
    samples: Sequence[Feeds],
    group: list[_Layer],
    graph_inputs: set[str],
    patches_per_sample: int,
    seed: int,
) -> dict[str, list[tuple[np.ndarray, int]]]:
    """sum x x^T over random input vectors of each layer of `group`, per weight group and
    column block (`LayerView.hessians`, float32), and how many vectors each sums, from one
    pass over `samples`. The vectors
    of layer i on sample j are drawn from their own seed, so the result does not depend on
    how the layers are grouped."""
    names = list(dict.fromkeys(c.source for c in group if c.source not in graph_inputs))
    # unoptimized: exposing dozens of tensors from an optimized session costs more than
    # it saves (efficientpose 151 ms against 354 ms per sample)
    sess = make_session(with_outputs(model, names), optimize=False) if names else None
    hess: dict[str, list[tuple[np.ndarray, int]]] = {}
    for j, feeds in enumerate(samples):
        got = dict(zip(names, sess.run(names, feeds))) if sess is not None else {}
        got.update(feeds)
        for node, source, view, i in group:
            rng = np.random.default_rng([seed, i, j])
            h = view.hessians(np.asarray(got[source], np.float32), patches_per_sample, rng)
            if h is None:
                continue
            name = node.name or ""
            if name in hess:
                for b, ((total, n), (part, m)) in enumerate(zip(hess[name], h)):
                    total += part
                    hess[name][b] = (total, n + m)
            else:
                hess[name] = h
        del got
    return hess


def _round_layer(
    layer: _Layer,
    hess: list[tuple[np.ndarray, int]],
    table: CalibrationTable,
    damp: float,
    min_vectors: float = 0.0,
) -> tuple[ir.Value, np.ndarray, WeightRefinement]:
    """(weight, its rounded values, errors) of one layer: GPTQ or nearest rounding, per
    weight group the one with the lower error on the sampled inputs (each column block
    of the view rounded on its own Hessian). A block summed over fewer than `min_vectors`
    x its columns input vectors keeps nearest rounding: GPTQ would fit those few."""
    weight, view = layer.node.inputs[1], layer.view
    assert weight is not None and weight.const_value is not None
    w = weight.const_value.numpy().astype(np.float64)
    rows = view.rows(w)
    g, per_group = rows.shape[:2]
    entry = table.weights[name_of(weight)]
    # the grid the plan's integers are stored on (`deploy`), so the shipped weights are these
    scale = np.broadcast_to(channel_scales(entry, 1), (g * per_group,))
    srows = scale.reshape(g, per_group)
    q0 = np.clip(np.round(rows / srows[..., None]), -QMAX, QMAX)
    q1 = q0.copy()
    # the integers the shipped weights keep (each channel's extreme): rounded around
    pins = view.rows(extreme_pins(w, entry))
    e0, e1 = np.zeros(g), np.zeros(g)
    for (_, cols), (h32, vectors) in zip(view.blocks(), hess):
        h = h32.astype(np.float64)
        part = rows[:, :, cols]
        if vectors >= min_vectors * len(cols):
            wide = len(cols) >= FLOAT32_FROM_COLUMNS  # the float32 sums as they are
            kind = np.float32 if wide else np.float64
            q1[:, :, cols] = _gptq(
                part.astype(kind, copy=False),
                h32 if wide else h,
                srows.astype(kind, copy=False),
                damp,
                pins[:, :, cols],
            )
        e0 += _rounding_error(q0[:, :, cols], srows, part, h)
        e1 += _rounding_error(q1[:, :, cols], srows, part, h)
    q_new = np.where((e1 < e0)[:, None, None], q1, q0)
    array = view.weight(q_new * srows[:, :, None]).astype(np.float32)
    report = WeightRefinement(
        layer.node.name or "", float(e0.sum()), float(np.minimum(e0, e1).sum())
    )
    return weight, array, report


def _channel_axis(view: LayerView) -> int:
    """The weight entry's channel axis whose channels are the view's rows."""
    if view.kind == "linear":
        return 1 if view.transposed else 0
    return 1 if view.kind == "deconv" else 0


def optimize_weights(
    model: onnx.ModelProto,
    samples: Sequence[Feeds],
    table: CalibrationTable,
    *,
    damp: float = 0.01,
    patches_per_sample: int = 1024,
    min_vectors: float = 0.0,
    nodes: Sequence[str] | None = None,
    seed: int = 0,
    on_node: Callable[[WeightRefinement], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[onnx.ModelProto, list[WeightRefinement]]:
    """A copy of `model` whose constant Conv, ConvTranspose, Gemm and MatMul weights
    (`layer_view`) are replaced by int8 values (times the table's per-channel scales)
    rounded to minimize the layer's output error on `samples`.

    The weights are already on the int8 grid of the table's scales, so `insert_qdq` with
    the same table reproduces exactly these integers. Per output-channel scales are not
    changed; only the rounding is. A layer whose optimized rounding is not better on the
    sampled inputs keeps plain rounding, and so does one with fewer sampled input vectors
    than `min_vectors` x its columns. `on_progress(done, total)`: layers rounded so far."""
    if not samples:
        raise GraphkitError("weight optimization needs at least one sample")
    out = to_ir(model)
    quantized = set(quantized_names(out.graph, table))
    wanted = None if nodes is None else set(nodes)
    picked: list[_Layer] = []
    for node in out.graph:
        if node.name not in quantized or (wanted is not None and node.name not in wanted):
            continue
        act, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if act is None or weight is None or not weight.is_initializer():
            continue
        entry = table.weights.get(name_of(weight))
        if entry is None or weight.const_value is None:
            continue
        view = view_of(ir.serde.serialize_node(node), tuple(weight.const_value.shape.numpy()))
        if view is None or view.widest > MAX_COLUMNS:
            continue
        if len(entry.amax) == 1 or entry.axis == _channel_axis(view):
            picked.append(_Layer(node, name_of(act), view, len(picked)))
    if not picked:
        raise GraphkitError("the table quantizes no layer whose weights can be optimized")
    graph_inputs = {i.name for i in model.graph.input}
    report = []
    rounded: dict[ir.Value, np.ndarray] = {}  # stored once every layer read the originals
    done = 0
    if on_progress is not None:
        on_progress(done, len(picked))
    for group in _hessian_groups(picked, HESSIAN_BUDGET_BYTES):
        hess = _hessians(model, samples, group, graph_inputs, patches_per_sample, seed)
        for layer in group:
            h = hess.pop(layer.node.name or "", None)  # none: an input it cannot read
            if h is not None:
                weight, array, r = _round_layer(layer, h, table, damp, min_vectors)
                rounded[weight] = array
                report.append(r)
                if on_node is not None:
                    on_node(r)
            done += 1
            if on_progress is not None:
                on_progress(done, len(picked))
    for weight, array in rounded.items():
        set_initializer(weight, as_tensor(array, name_of(weight)))
    return to_proto(out), report


def restore_weights(
    optimized: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[str]
) -> onnx.ModelProto:
    """`optimized` with the original float weights of `nodes` back (layers kept float
    after `optimize_weights` should compute with their true weights)."""
    out = to_ir(optimized)
    _restore(out.graph, to_ir(original).graph, nodes)
    return to_proto(out)


def _restore(graph: ir.Graph, original: ir.Graph, nodes: Sequence[str]) -> None:
    """`restore_weights` on the IR: `graph`'s initializers read by `nodes` in `original`
    take `original`'s tensors (shared, not copied)."""
    wanted = set(nodes)
    mine = graph.initializers
    for node in original:
        if node.name not in wanted:
            continue
        for v in node.inputs:
            if (
                v is not None
                and v.is_initializer()
                and v.const_value is not None
                and v.name in mine
            ):
                set_initializer(mine[name_of(v)], v.const_value)


class RoundedCandidates:
    """Q/DQ models of the weights `optimize_weights` rounded (`base`), some layers back on
    their true float weights from `original`: `candidates(table, restore, keep_float)` is
    `insert_qdq(restore_weights(base, original, restore), table, keep_float)`, with
    `original` read once for every candidate (sensitivity makes one per layer)."""

    def __init__(self, base: onnx.ModelProto, original: onnx.ModelProto):
        self.base, self.proto = base, original
        self.original = to_ir(original).graph
        opset = next((o.version for o in base.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.upgrade = opset < MIN_OPSET  # insert_qdq upgrades the restored model first

    def __call__(
        self, table: CalibrationTable, restore: Sequence[str], keep_float: Sequence[str]
    ) -> onnx.ModelProto:
        if self.upgrade:
            restored = restore_weights(self.base, self.proto, restore)
            return insert_qdq(restored, table, keep_float=keep_float)
        out = to_ir(self.base)
        _restore(out.graph, self.original, restore)
        add_qdq(out, table, keep_float)
        return to_proto(out)


def round_weights(
    model: onnx.ModelProto, spec, table: CalibrationTable, *, samples: int = 8
) -> onnx.ModelProto:
    """`optimize_weights` on the first `samples` samples of an input spec (path or InputSpec)."""
    feeds, _ = spec_samples(spec, samples)
    rounded, _ = optimize_weights(model, feeds, table)
    return rounded


__all__ = [
    "DEFAULT_FACTORS",
    "Refinement",
    "RoundedCandidates",
    "WeightRefinement",
    "optimize_weights",
    "refine_thresholds",
    "restore_weights",
    "round_weights",
]
