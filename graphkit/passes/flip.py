"""`strip-flip-test`: remove an mmpose-style test-time flip ensemble, keep the plain branch.

graphkit's own pass (no library knows this pattern). A model exported with
`flip_test=True` computes `(net(x) + back(net(flip(x)))) * 0.5` where `back` flips the
heatmaps along width, swaps left/right channels (flip pairs) and maybe shifts them one
pixel (`shift_heatmap`). Export details vary (Slice with step -1 or Gather for the flip,
Gather or Slice+Concat for the pairs, Concat or ScatterND for the shift), so the pass
matches only what is stable:

1. an average node: `Mul(Add(a, b), 0.5)`, `Div(Add(a, b), 2)`, `Mean(a, b)` or
   `Add(Mul(a, 0.5), Mul(b, 0.5))`;
2. exactly one operand depends on a full reversal (Slice step -1 or Gather with reversed
   indices) of a tensor computed from the graph inputs without any flip; the other operand
   (the plain branch) depends on no such flip;
3. numerically, on sample inputs, the flipped operand equals the plain operand computed on
   the flipped input, flipped back, with a channel permutation and an optional one-pixel
   shift. The permutation found gives the flip pairs reported; if no such transform exists
   the average is left alone.

The average's consumers (or the graph output) then read the plain tensor and everything
that no longer contributes is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from graphkit import weights
from graphkit.graph import ancestors, consumers, producers
from graphkit.passes.base import PassResult, register
from graphkit.passes.outputs import prune, value_infos


@dataclass
class Ensemble:
    avg_node: int
    avg_out: str
    plain: str
    flipped: str
    input_flips: set[int]
    batch_concat: int | None = None  # Concat([x, flip(x)], axis=0) of a batched flip test


@dataclass
class Transform:
    axis: int
    channel_axis: int
    perm: list[int]
    shift: bool

    @property
    def pairs(self) -> list[list[int]]:
        return [[i, j] for i, j in enumerate(self.perm) if i < j]


# --------------------------------------------------------------------------- constants


class _Constants:
    """Values of initializers and Constant nodes, converted only when asked for."""

    def __init__(self, graph: onnx.GraphProto):
        self._protos: dict[str, onnx.TensorProto] = {i.name: i for i in graph.initializer}
        self._values: dict[str, np.ndarray] = {}
        for node in graph.node:
            if node.op_type != "Constant" or not node.output:
                continue
            for attr in node.attribute:
                if attr.name == "value":
                    self._protos[node.output[0]] = attr.t
                elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    self._values[node.output[0]] = np.array(helper.get_attribute_value(attr))

    def __contains__(self, name: str) -> bool:
        return name in self._values or name in self._protos

    def get(self, name: str) -> np.ndarray | None:
        if name not in self._values and name in self._protos:
            self._values[name] = weights.tensor_array(self._protos[name])
        return self._values.get(name)

    def size(self, name: str) -> int | None:
        if name in self._values:
            return int(self._values[name].size)
        proto = self._protos.get(name)
        return None if proto is None else int(np.prod(proto.dims, dtype=np.int64))

    def names(self) -> set[str]:
        return set(self._values) | set(self._protos)


def _constants(graph: onnx.GraphProto) -> _Constants:
    return _Constants(graph)


def _is_scalar(values: _Constants, name: str, target: float) -> bool:
    if values.size(name) != 1:
        return False
    v = values.get(name)
    return v is not None and v.size == 1 and bool(np.isclose(float(v.reshape(-1)[0]), target))


def _dims(model_vi: dict[str, onnx.ValueInfoProto], name: str) -> list[int | None] | None:
    vi = model_vi.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------- flips


def _flip_axis(
    node: onnx.NodeProto, values: _Constants, vis: dict[str, onnx.ValueInfoProto]
) -> int | None:
    """The axis a node fully reverses (Slice step -1 / Gather reversed indices), or None."""
    dims = _dims(vis, node.input[0]) if node.input else None
    big = 2**31 - 1
    if node.op_type == "Slice" and len(node.input) >= 5:
        starts, ends, axes, steps = (values.get(n) for n in node.input[1:5])
        if starts is None or ends is None or axes is None or steps is None or steps.size != 1:
            return None
        if int(steps.reshape(-1)[0]) != -1:
            return None
        axis, start, end = (int(v.reshape(-1)[0]) for v in (axes, starts, ends))
        if dims is not None:
            axis %= len(dims)
        dim = dims[axis] if dims is not None and axis < len(dims) else None
        start_ok = start == -1 or start >= big or (dim is not None and start >= dim - 1)
        end_ok = end <= -big or (dim is not None and end <= -dim - 1)
        return axis if start_ok and end_ok else None
    if node.op_type == "Gather" and len(node.input) == 2:
        n_idx = values.size(node.input[1])
        idx = values.get(node.input[1]) if n_idx is not None and n_idx <= 1 << 16 else None
        if idx is None or idx.ndim != 1 or idx.size < 2:
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        n = idx.size
        if dims is not None:
            axis %= len(dims)
            if dims[axis] is not None and dims[axis] != n:
                return None
        if np.array_equal(np.where(idx < 0, idx + n, idx), np.arange(n - 1, -1, -1)):
            return axis
    return None


def _flips(
    model: onnx.ModelProto, vis: dict[str, onnx.ValueInfoProto]
) -> tuple[dict[int, int], dict[int, int]]:
    """All flip nodes, and the input flips among them (node index -> axis).

    An input flip reverses something computed from the graph inputs with no flip before it.
    """
    graph = model.graph
    values = _constants(graph)
    flips = {}
    for i, node in enumerate(graph.node):
        axis = _flip_axis(node, values, vis)
        if axis is not None and node.input[0] not in values:
            flips[i] = axis
    real_inputs = {vi.name for vi in graph.input} - values.names()
    result = {}
    for i, axis in flips.items():
        data = graph.node[i].input[0]
        up = ancestors(graph, [data])
        if up & set(flips):
            continue
        reads = {data} | {n for j in up for n in graph.node[j].input}
        if reads & real_inputs:
            result[i] = axis
    return flips, result


def _averages(graph: onnx.GraphProto, values: _Constants) -> list[tuple[int, str, str]]:
    """(node index, operand a, operand b) for every node that averages two tensors."""
    prod = producers(graph)
    cons = consumers(graph)

    def other(node: onnx.NodeProto, target: float) -> str | None:
        a, b = node.input[0], node.input[1]
        if _is_scalar(values, b, target):
            return a
        if node.op_type == "Mul" and _is_scalar(values, a, target):
            return b
        return None

    found = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Mean" and len(node.input) == 2:
            found.append((i, node.input[0], node.input[1]))
            continue
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            s = other(node, 0.5 if node.op_type == "Mul" else 2.0)
            j = prod.get(s) if s else None
            if s and j is not None and graph.node[j].op_type == "Add" and len(cons.get(s, [])) == 1:
                add = graph.node[j]
                found.append((i, add.input[0], add.input[1]))
            continue
        if node.op_type == "Add" and len(node.input) == 2:
            halves = []
            for t in node.input:
                j = prod.get(t)
                if j is None or graph.node[j].op_type != "Mul" or len(cons.get(t, [])) != 1:
                    break
                halves.append(other(graph.node[j], 0.5))
            if len(halves) == 2 and all(halves):
                found.append((i, halves[0], halves[1]))
    return found


def find_ensembles(model: onnx.ModelProto) -> tuple[list[Ensemble], list[str]]:
    """Structural candidates: averages of a plain branch and an input-flipped branch."""
    graph = model.graph
    vis = value_infos(model)
    all_flips, flips = _flips(model, vis)
    notes: list[str] = []
    if not flips:
        return [], notes
    values = _constants(graph)
    result = []
    for idx, a, b in _averages(graph, values):
        up_a, up_b = ancestors(graph, [a]), ancestors(graph, [b])
        fa, fb = up_a & set(flips), up_b & set(flips)
        avg_out = graph.node[idx].output[0]
        if fa and fb:
            batched = _batched(graph, a, b, up_a, up_b, set(all_flips) - set(flips))
            if batched is None:
                notes.append(f"average '{avg_out}' has the flip on both operands; left unchanged")
            else:
                plain, flipped, concat = batched
                result.append(Ensemble(idx, avg_out, plain, flipped, fa | fb, concat))
            continue
        if not fa and not fb:
            continue
        plain, flipped, fl = (b, a, fa) if fa else (a, b, fb)
        result.append(Ensemble(idx, avg_out, plain, flipped, fl))
    return result, notes


def _batched(
    graph: onnx.GraphProto,
    a: str,
    b: str,
    up_a: set[int],
    up_b: set[int],
    back_flips: set[int],
) -> tuple[str, str, int] | None:
    """A flip test run as one batch: net(Concat([x, flip(x)], axis 0)), sliced, averaged.

    The plain operand is the one with no flip-back on its path; returns (plain, flipped,
    index of the Concat) or None.
    """
    ba, bb = bool(up_a & back_flips), bool(up_b & back_flips)
    if ba == bb:
        return None
    plain, flipped = (b, a) if ba else (a, b)
    inputs = {vi.name for vi in graph.input} - {i.name for i in graph.initializer}
    prod = producers(graph)
    for i in ancestors(graph, [plain]):
        node = graph.node[i]
        if node.op_type != "Concat" or len(node.input) != 2:
            continue
        axis = next((x.i for x in node.attribute if x.name == "axis"), None)
        x, fx = node.input
        j = prod.get(fx)
        if axis == 0 and x in inputs and j is not None and graph.node[j].input[0] == x:
            return plain, flipped, i
    return None


# --------------------------------------------------------------------------- confirmation


def _shift(q: np.ndarray, axis: int) -> np.ndarray:
    """mmpose shift_heatmap: out[..., 1:] = out[..., :-1] along `axis`."""
    first = np.take(q, [0], axis=axis)
    rest = np.take(q, np.arange(q.shape[axis] - 1), axis=axis)
    return np.concatenate([first, rest], axis=axis)


def match_transform(plain_on_flipped: np.ndarray, flipped: np.ndarray) -> Transform | None:
    """Find flip axis, channel permutation and shift with flipped == T(plain_on_flipped)."""
    p, f = plain_on_flipped.astype(np.float64), flipped.astype(np.float64)
    if p.shape != f.shape or p.ndim < 2 or p.size == 0:
        return None
    tol = 1e-5 + 1e-4 * float(np.max(np.abs(f)))
    axes = [p.ndim - 1] + [a for a in range(1, p.ndim - 1)][::-1]
    for axis in axes:
        if p.shape[axis] < 2:
            continue
        for shift in (False, True):
            q = np.flip(p, axis)
            if shift:
                q = _shift(q, axis)
            for ch in [1] + [c for c in range(2, p.ndim) if c != 1]:
                if ch == axis:
                    continue
                perm = _channel_perm(q, f, ch, tol)
                if perm is not None:
                    return Transform(axis, ch, perm, shift)
    return None


def _channel_perm(q: np.ndarray, f: np.ndarray, ch: int, tol: float) -> list[int] | None:
    qc = np.moveaxis(q, ch, 0).reshape(q.shape[ch], -1)
    fc = np.moveaxis(f, ch, 0).reshape(f.shape[ch], -1)
    perm: list[int] = []
    for i in range(fc.shape[0]):
        diffs = np.max(np.abs(qc - fc[i]), axis=1)
        # Identical channels (e.g. all zero) can match several: take the first unused one.
        j = next((int(j) for j in np.argsort(diffs, kind="stable") if j not in perm), None)
        if j is None or diffs[j] > tol:
            return None
        perm.append(j)
    return perm


def _probe_values(
    model: onnx.ModelProto, found: list[Ensemble], flips: dict[int, int]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values of every branch on sample inputs, and of the plain branches on flipped inputs."""
    from graphkit.runtime import ort as ort_rt

    graph = model.graph
    cut = {
        graph.node[i].input[0]: axis for e in found for i in e.input_flips for axis in [flips[i]]
    }
    wanted = list(dict.fromkeys([t for e in found for t in (e.plain, e.flipped)]))
    feeds = ort_rt.sample_inputs(model, seed=1)
    inner = [n for n in dict.fromkeys(wanted + list(cut)) if n not in feeds]
    first = {**ort_rt.run(model, feeds, outputs=inner), **feeds}
    # Evaluate the plain branches with the flip-test inputs flipped: cut there as inputs.
    vis = value_infos(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    real_inputs = [n for n in ort_rt.graph_input_names(model) if n not in cut]
    plains = list(dict.fromkeys(e.plain for e in found))
    outs = [_typed_vi(vis, n, first[n]) for n in plains]
    ins = [_typed_vi(vis, n, first[n]) for n in cut]
    ins += [vi for vi in model.graph.input if vi.name in real_inputs]
    prune(probe, outs, ins)
    used = {n for node in probe.graph.node for n in node.input}
    del_inputs = [vi for vi in probe.graph.input if vi.name not in used and vi.name not in plains]
    for vi in del_inputs:
        probe.graph.input.remove(vi)
    names = {vi.name for vi in probe.graph.input}
    flipped_feeds = {n: np.ascontiguousarray(np.flip(first[n], axis)) for n, axis in cut.items()}
    flipped_feeds.update({n: v for n, v in feeds.items() if n not in cut})
    second = ort_rt.run(probe, {k: v for k, v in flipped_feeds.items() if k in names})
    return first, second


def _typed_vi(vis: dict, name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(value.dtype)
    return helper.make_tensor_value_info(name, elem, list(value.shape))


# --------------------------------------------------------------------------- the pass


@register("strip-flip-test", changes_outputs=True)
def strip_flip_test(model: onnx.ModelProto) -> PassResult:
    """Remove a test-time flip ensemble (mmpose flip_test=True) and keep the plain branch.

    Finds each average of the plain output and the flipped-input branch (flipped back,
    left/right channels swapped, maybe shifted one pixel), checks numerically that the
    second branch really is the same network on the flipped input, then keeps only the
    plain branch. Works per output, so multi-stage heads with one ensemble per stage are
    handled. Reports the nodes removed, the flip pairs found and whether a shift was found.
    Without such an ensemble the model is returned unchanged. graphkit's own pass: no
    library knows this pattern (see docs/pose-passes.md).
    """
    graph = model.graph
    found, notes = find_ensembles(model)
    if not found:
        return PassResult(
            model, False, notes + ["no flip-test ensemble found; model unchanged"], None
        )
    vis = value_infos(model)
    _, flips = _flips(model, vis)
    separate = [e for e in found if e.batch_concat is None]
    confirmed: list[tuple[Ensemble, Transform]] = []
    if separate:
        first, second = _probe_values(model, separate, flips)
        for e in separate:
            _confirm(e, match_transform(second[e.plain], first[e.flipped]), confirmed, notes)
    batched = [e for e in found if e.batch_concat is not None]
    if batched:
        for e, t in _confirm_batched(model, batched, flips):
            _confirm(e, t, confirmed, notes)
    if not confirmed:
        return PassResult(model, False, notes + ["model unchanged"], None)

    old_outputs = [o.name for o in graph.output]
    avg_nodes = {e.avg_node for e, _ in confirmed}
    downstream = {o for o in old_outputs if ancestors(graph, [o]) & avg_nodes} - {
        e.avg_out for e, _ in confirmed
    }
    output_map = {e.avg_out: e.plain for e, _ in confirmed if e.avg_out in old_outputs}
    output_map.update({o: o for o in old_outputs if o not in output_map and o not in downstream})
    # An average inside the graph (decoding after it): check the kept plain tensor itself.
    output_map.update({e.plain: e.plain for e, _ in confirmed if e.avg_out not in old_outputs})

    before = len(graph.node)
    _rewire(model, [e for e, _ in confirmed])
    removed = before - len(graph.node) + prune(model, list(graph.output))

    groups: dict[str, list[str]] = {}
    for e, t in confirmed:
        axes = ", ".join(str(a) for a in sorted({flips[i] for i in e.input_flips}))
        how = (
            f"input flipped on axis {axes}, output flipped back on axis {t.axis}, "
            f"flip pairs {t.pairs or 'none'}, shift {'found' if t.shift else 'not found'}"
        )
        groups.setdefault(how, []).append(f"'{e.avg_out}' <- '{e.plain}'")
    for how, outs in groups.items():
        notes.append(f"kept the plain branch for {', '.join(outs)} ({how})")
    notes.append(f"removed {removed} node(s) of the flip-test branch")
    for o in sorted(downstream):
        notes.append(
            f"output '{o}' is computed after the average, so it now comes from the plain "
            "branch and cannot be compared with the old model"
        )
    return PassResult(model, True, notes, output_map)


def _confirm(
    e: Ensemble, t: Transform | None, confirmed: list[tuple[Ensemble, Transform]], notes: list[str]
) -> None:
    if t is None:
        notes.append(
            f"'{e.avg_out}' averages a flipped-input branch that is not the plain branch "
            "flipped back; left unchanged"
        )
    else:
        confirmed.append((e, t))


def _confirm_batched(
    model: onnx.ModelProto, found: list[Ensemble], flips: dict[int, int]
) -> list[tuple[Ensemble, Transform | None]]:
    """Batched flip test: run the stripped model on the flipped input and match."""
    from graphkit.errors import GraphkitError
    from graphkit.runtime import ort as ort_rt

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    _rewire(stripped, found)
    outs = [e.avg_out for e in found]
    prune(stripped, [helper.make_empty_tensor_value_info(n) for n in outs])
    feeds = ort_rt.sample_inputs(model, seed=1)
    flipped_feeds = dict(feeds)
    for e in found:
        concat = model.graph.node[e.batch_concat]
        x = concat.input[0]
        axis = next(flips[i] for i in e.input_flips if model.graph.node[i].input[0] == x)
        flipped_feeds[x] = np.ascontiguousarray(np.flip(feeds[x], axis))
    try:
        old = ort_rt.run(model, feeds, outputs=[e.flipped for e in found])
        new = ort_rt.run(stripped, flipped_feeds, outputs=outs)
    except GraphkitError:  # e.g. a Reshape that hard-codes the batch of two
        return [(e, None) for e in found]
    return [(e, match_transform(new[e.avg_out], old[e.flipped])) for e in found]


def _rewire(model: onnx.ModelProto, ensembles: list[Ensemble]) -> None:
    """Make every reader of each average read the plain tensor; drop the average nodes.

    For a batched flip test the network is fed the plain input instead of the Concat.
    """
    graph = model.graph
    for e in ensembles:
        if e.batch_concat is not None:
            concat = graph.node[e.batch_concat]
            for node in graph.node:
                for k, n in enumerate(node.input):
                    if n == concat.output[0]:
                        node.input[k] = concat.input[0]
    outputs = {o.name for o in graph.output}
    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    extra = []
    for e in ensembles:
        if e.avg_out in outputs:
            if e.plain in outputs or e.plain in sources:
                extra.append(helper.make_node("Identity", [e.plain], [e.avg_out]))
            else:
                _rename(graph, e.plain, e.avg_out)
        else:
            for node in graph.node:
                for k, n in enumerate(node.input):
                    if n == e.avg_out:
                        node.input[k] = e.plain
    drop = {e.avg_node for e in ensembles}
    kept = [n for i, n in enumerate(graph.node) if i not in drop] + extra
    del graph.node[:]
    graph.node.extend(kept)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for k, n in enumerate(node.input):
            if n == old:
                node.input[k] = new
        for k, n in enumerate(node.output):
            if n == old:
                node.output[k] = new
    for vi in list(graph.value_info):
        if vi.name == old:
            graph.value_info.remove(vi)
