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
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphkit.errors import GraphkitError
from graphkit.quant.collect import (
    activation_inputs,
    initializer_names,
    quantizable_nodes,
    quantized_layers,
    spec_samples,
)
from graphkit.quant.qdq import insert_qdq
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


def _consumers(model: onnx.ModelProto, table: CalibrationTable) -> dict[str, list[onnx.NodeProto]]:
    """Tensor -> quantized nodes reading it (as insert_qdq quantizes them)."""
    constants = initializer_names(model)
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in quantizable_nodes(model, table.keep_float):
        acts = activation_inputs(node, constants)
        if not acts or any(t not in table.activations for _, t in acts):
            continue
        if len(acts) != 1:  # MatMul of two activations: its error depends on two scales
            continue
        out.setdefault(acts[0][1], []).append(node)
    return out


def _layer_model(
    qdq: onnx.ModelProto, float_model: onnx.ModelProto, tensor: str, nodes: list[onnx.NodeProto]
) -> onnx.ModelProto:
    """A model: x (float), amax (scalar), ref_i (float outputs) -> err_i = sum (L_i(Qa(x)) - ref_i)^2.

    The consumers keep the Q/DQ model's dequantized int8 weights (and everything else
    constant they read), only their activation input is replaced."""
    qnodes = {n.name: n for n in qdq.graph.node}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    inits = {i.name: i for i in qdq.graph.initializer}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    nodes_out: list[onnx.NodeProto] = [
        helper.make_node("Div", ["amax", "qmax"], ["scale"]),
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xdq"]),
    ]
    used_inits = [
        numpy_helper.from_array(np.array(QMAX, np.float32), "qmax"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
    ]
    seen: set[str] = set()
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("amax", TensorProto.FLOAT, []),
    ]
    outputs = []

    def pull(name: str) -> str:
        """Copy the constant sub-graph (DQ of int8 weights) that produces `name`."""
        if name in seen or not name:
            return name
        seen.add(name)
        if name in inits:
            used_inits.append(inits[name])
        elif name in float_inits:
            used_inits.append(float_inits[name])
        elif name in producer:
            p = producer[name]
            for t in p.input:
                pull(t)
            nodes_out.append(p)
        return name

    for k, node in enumerate(nodes):
        q = qnodes.get(node.name, node)
        layer = onnx.NodeProto()
        layer.CopyFrom(q)
        for i, t in enumerate(node.input):
            if t == tensor:
                layer.input[i] = "xdq"
            else:
                layer.input[i] = pull(q.input[i])
        del layer.output[:]
        layer.output.append(f"y{k}")
        layer.name = f"layer{k}"
        nodes_out.append(layer)
        ref = f"ref{k}"
        inputs.append(helper.make_tensor_value_info(ref, TensorProto.FLOAT, None))
        nodes_out.append(helper.make_node("Sub", [f"y{k}", ref], [f"d{k}"]))
        nodes_out.append(helper.make_node("Mul", [f"d{k}", f"d{k}"], [f"s{k}"]))
        nodes_out.append(helper.make_node("ReduceSum", [f"s{k}"], [f"err{k}"], keepdims=0))
        outputs.append(helper.make_tensor_value_info(f"err{k}", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes_out, "refine", inputs, outputs, used_inits)
    model = helper.make_model(graph, opset_imports=list(qdq.opset_import))
    model.ir_version = qdq.ir_version
    return model


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
    consumers = _consumers(model, table)
    if tensors is not None:
        consumers = {t: n for t, n in consumers.items() if t in set(tensors)}
    if not consumers:
        raise GraphkitError("the table quantizes no layer input that can be refined")
    qdq = insert_qdq(model, table)
    # float inputs and float outputs of every consumer, one sample at a time
    need = list(consumers)
    outs = {t: [n.output[0] for n in nodes] for t, nodes in consumers.items()}
    exposed = list(dict.fromkeys(need + [o for v in outs.values() for o in v]))
    graph_inputs = {i.name for i in model.graph.input}
    run_names = [t for t in exposed if t not in graph_inputs]
    sess = make_session(with_outputs(model, run_names), optimize=False)
    sessions = {
        t: make_session(_layer_model(qdq, model, t, nodes)) for t, nodes in consumers.items()
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
    out = CalibrationTable(
        method=table.method,
        settings={**table.settings, "refined": {"factors": list(factors), "samples": len(samples)}},
        model_hash=table.model_hash,
        model_path=table.model_path,
        data_source=table.data_source,
        num_samples=table.num_samples,
        activations=refined,
        weights=dict(table.weights),
        keep_float=list(table.keep_float),
    )
    return out, report


# ---------------------------------------------------------------------------------------
# Weight rounding against the layer output (GPTQ-style error feedback)


@dataclass
class WeightRefinement:
    """One Conv's weights: output squared error (on the sampled patches) before and after."""

    node: str
    error_before: float
    error_after: float


def _conv_geometry(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> dict | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(w_shape) != 4:
        return None
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    kh, kw = w_shape[2], w_shape[3]
    return {
        "group": int(attrs.get("group", 1)),
        "strides": list(attrs.get("strides", [1, 1])),
        "pads": list(attrs.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0],
        "dilations": list(attrs.get("dilations", [1, 1])),
        "kernel": (kh, kw),
    }


def _patch_index(shape: tuple[int, ...], geo: dict, limit: int, rng: np.random.Generator):
    """Output positions (ys, xs) of at most `limit` random patches of a (1, C, H, W) input."""
    t, left, b, r = geo["pads"]
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    h, w = shape[2] + t + b, shape[3] + left + r
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    return np.divmod(rng.permutation(oh * ow)[:limit], ow)


def _patches(x: np.ndarray, geo: dict, index) -> np.ndarray:
    """im2col of a (1, C, H, W) input at the output positions `index`:
    (groups, patches, C/g * kh * kw)."""
    t, left, b, r = geo["pads"]
    x = np.pad(x[0], ((0, 0), (t, b), (left, r)))
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    c = x.shape[0]
    ys, xs = index
    iy = ys[:, None] * sh + np.arange(kh)[None, :] * dh  # (P, kh)
    ix = xs[:, None] * sw + np.arange(kw)[None, :] * dw  # (P, kw)
    p = x[:, iy[:, :, None], ix[:, None, :]]  # (C, P, kh, kw)
    g = geo["group"]
    p = p.reshape(g, c // g, len(ys), kh * kw).transpose(0, 2, 1, 3)
    return p.reshape(g, len(ys), (c // g) * kh * kw)


def _rounding_error(q: np.ndarray, scale: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Output squared error of integer weights q (groups, rows, cols) on the sampled
    patches, per group: (W - D) sum(x x^T) (W - D)^T, D = q * scale."""
    d = w - q * scale[..., None]
    return np.sum((d @ h) * d, axis=(1, 2))


def _gptq(
    w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float, block: int = 128
) -> np.ndarray:
    """Integer weights for `w` (groups, rows, cols) with per-row `scale` (groups, rows)
    that keep (w - q*s) H (w - q*s)^T small in every group: quantize column by column,
    pushing each column's rounding error onto the columns not yet quantized (GPTQ /
    optimal brain quantization). All groups at once: a depthwise Conv is hundreds of
    one-row groups."""
    groups, _, cols = w.shape
    h = h.copy()
    diag = np.arange(cols)
    d = h[:, diag, diag]
    h[:, diag, diag] = np.where(d == 0, 1.0, d)  # dead inputs
    mean = np.maximum(h[:, diag, diag].mean(axis=1), 1e-12)
    h[:, diag, diag] += damp * mean[:, None]
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # upper
    except np.linalg.LinAlgError:
        if groups == 1:
            return np.clip(np.round(w / scale[..., None]), -QMAX, QMAX)
        return np.concatenate(
            [_gptq(w[g : g + 1], h[g : g + 1], scale[g : g + 1], 0.0, block) for g in range(groups)]
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
            q[:, :, b0 + i] = qi
            err = (wb[:, :, i] - qi * scale) / hb[:, i, i, None]
            wb[:, :, i + 1 :] -= err[:, :, None] * hb[:, None, i, i + 1 :]
            errs[:, :, i] = err
        w[:, :, b1:] -= errs @ hinv[:, b0:b1, b1:]
    return q


def optimize_weights(
    model: onnx.ModelProto,
    samples: Sequence[Feeds],
    table: CalibrationTable,
    *,
    damp: float = 0.01,
    patches_per_sample: int = 1024,
    nodes: Sequence[str] | None = None,
    seed: int = 0,
    on_node: Callable[[WeightRefinement], None] | None = None,
) -> tuple[onnx.ModelProto, list[WeightRefinement]]:
    """A copy of `model` whose Conv weights are replaced by int8 values (times the table's
    per-channel scales) rounded to minimize the layer's output error on `samples`.

    The weights are already on the int8 grid of the table's scales, so `insert_qdq` with
    the same table reproduces exactly these integers. Per output-channel scales are not
    changed; only the rounding is. A layer whose optimized rounding is not better on the
    sampled patches keeps plain rounding."""
    if not samples:
        raise GraphkitError("weight optimization needs at least one sample")
    inits = {i.name: i for i in model.graph.initializer}
    quantized = set(quantized_layers(model, table))
    picked = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in quantized:
            continue
        if nodes is not None and node.name not in set(nodes):
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        entry = table.weights.get(node.input[1])
        if entry is None or entry.axis != 0:
            continue
        w_shape = tuple(inits[node.input[1]].dims)
        geo = _conv_geometry(node, w_shape)
        if geo is not None:
            picked.append((node, geo))
    if not picked:
        raise GraphkitError("the table quantizes no Conv whose weights can be optimized")
    rng = np.random.default_rng(seed)
    graph_inputs = {i.name for i in model.graph.input}
    names = list(dict.fromkeys(n.input[0] for n, _ in picked if n.input[0] not in graph_inputs))
    sess = make_session(with_outputs(model, names), optimize=False) if names else None
    hess: dict[str, np.ndarray] = {}  # sum of x x^T over the sampled input patches
    for feeds in samples:
        got = dict(zip(names, sess.run(names, feeds))) if sess is not None else {}
        got.update(feeds)
        for node, geo in picked:
            x = np.asarray(got[node.input[0]], np.float32)
            if x.ndim != 4:
                continue
            index = _patch_index(x.shape, geo, patches_per_sample, rng)
            p = _patches(x, geo, index)  # (g, P, cols)
            h = np.matmul(p.transpose(0, 2, 1), p).astype(np.float64)  # float32 BLAS
            hess[node.name] = hess.get(node.name, 0) + h
        del got
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out_inits = {i.name: i for i in out.graph.initializer}
    report = []
    for node, geo in picked:
        if node.name not in hess:
            continue
        wname = node.input[1]
        w = numpy_helper.to_array(inits[wname]).astype(np.float64)
        cout, g = w.shape[0], geo["group"]
        scale = np.maximum(np.asarray(table.weights[wname].amax, np.float64), 1e-12) / QMAX
        rows = w.reshape(g, cout // g, -1)
        srows = scale.reshape(g, cout // g)
        h = hess[node.name]
        q0 = np.clip(np.round(rows / srows[..., None]), -QMAX, QMAX)
        q1 = _gptq(rows, h, srows, damp)
        e0 = _rounding_error(q0, srows, rows, h)
        e1 = _rounding_error(q1, srows, rows, h)
        # per group, the rounding with the lower error on the sampled patches
        q_new = np.where((e1 < e0)[:, None, None], q1, q0)
        before = float(e0.sum())
        after = float(np.minimum(e0, e1).sum())
        new_w = (q_new * srows[:, :, None]).reshape(w.shape).astype(np.float32)
        out_inits[wname].CopyFrom(numpy_helper.from_array(new_w, wname))
        r = WeightRefinement(node.name, before, after)
        report.append(r)
        if on_node is not None:
            on_node(r)
    return out, report


def restore_weights(
    optimized: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[str]
) -> onnx.ModelProto:
    """`optimized` with the original float weights of `nodes` back (layers kept float
    after `optimize_weights` should compute with their true weights)."""
    out = onnx.ModelProto()
    out.CopyFrom(optimized)
    orig = {i.name: i for i in original.graph.initializer}
    mine = {i.name: i for i in out.graph.initializer}
    for node in original.graph.node:
        if node.name in set(nodes):
            for t in node.input:
                if t in orig and t in mine:
                    mine[t].CopyFrom(orig[t])
    return out


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
    "WeightRefinement",
    "optimize_weights",
    "refine_thresholds",
    "restore_weights",
    "round_weights",
]
