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

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import ancestors, bypass, name_of, remove_nodes, to_proto, values_by_name
from graphkit.passes.base import PassResult, register
from graphkit.passes.outputs import prune, typed_like, value_infos


@dataclass
class Ensemble:
    """An average of a plain and a flipped-input branch, by tensor name (so it can be
    found again in a copy of the model)."""

    avg_out: str
    plain: str
    flipped: str
    # (flipped tensor, axis) of each input flip the flipped branch depends on
    input_flips: list[tuple[str, int]] = field(default_factory=list)
    batch_concat: str | None = None  # Concat([x, flip(x)], axis=0) of a batched flip test


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

_SCALAR_ATTRS = ("value_float", "value_int", "value_floats", "value_ints")


class _Constants:
    """Values of initializers and Constant nodes, converted only when asked for."""

    def __init__(self, graph: ir.Graph):
        self._tensors: dict[ir.Value, ir.TensorProtocol] = {
            v: v.const_value for v in graph.initializers.values() if v.const_value is not None
        }
        self._values: dict[ir.Value, np.ndarray] = {}
        for node in graph:
            if node.op_type != "Constant" or not node.outputs:
                continue
            out = node.outputs[0]
            for name, attr in node.attributes.items():
                if name == "value" and attr.type == ir.AttributeType.TENSOR:
                    self._tensors[out] = attr.as_tensor()
                elif name in _SCALAR_ATTRS:
                    self._values[out] = np.array(attr.value)

    def __contains__(self, value: ir.Value | None) -> bool:
        return value in self._values or value in self._tensors

    def get(self, value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value not in self._values and value in self._tensors:
            self._values[value] = self._tensors[value].numpy()
        return self._values.get(value)

    def size(self, value: ir.Value | None) -> int | None:
        if value in self._values:
            return int(self._values[value].size)
        tensor = self._tensors.get(value) if value is not None else None
        return None if tensor is None else int(tensor.size)


def _is_scalar(values: _Constants, value: ir.Value | None, target: float) -> bool:
    if values.size(value) != 1:
        return False
    v = values.get(value)
    return v is not None and v.size == 1 and bool(np.isclose(float(v.reshape(-1)[0]), target))


def _dims(known: dict[str, ir.Value], value: ir.Value) -> list[int | None] | None:
    info = known.get(name_of(value))
    if info is None or info.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in info.shape]


# --------------------------------------------------------------------------- flips


def _flip_axis(node: ir.Node, values: _Constants, known: dict[str, ir.Value]) -> int | None:
    """The axis a node fully reverses (Slice step -1 / Gather reversed indices), or None."""
    data = node.inputs[0] if node.inputs else None
    if data is None:
        return None
    dims = _dims(known, data)
    big = 2**31 - 1
    if node.op_type == "Slice" and len(node.inputs) >= 5:
        starts, ends, axes, steps = (values.get(v) for v in node.inputs[1:5])
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
    if node.op_type == "Gather" and len(node.inputs) == 2:
        n_idx = values.size(node.inputs[1])
        idx = values.get(node.inputs[1]) if n_idx is not None and n_idx <= 1 << 16 else None
        if idx is None or idx.ndim != 1 or idx.size < 2:
            return None
        axis = node.attributes.get_int("axis", 0)
        n = idx.size
        if dims is not None:
            axis %= len(dims)
            if dims[axis] is not None and dims[axis] != n:
                return None
        if np.array_equal(np.where(idx < 0, idx + n, idx), np.arange(n - 1, -1, -1)):
            return axis
    return None


def _flips(
    graph: ir.Graph, known: dict[str, ir.Value]
) -> tuple[dict[ir.Node, int], dict[ir.Node, int]]:
    """All flip nodes, and the input flips among them (node -> axis).

    An input flip reverses something computed from the graph inputs with no flip before it.
    """
    values = _Constants(graph)
    flips = {}
    for node in graph:
        axis = _flip_axis(node, values, known)
        if axis is not None and node.inputs[0] not in values:
            flips[node] = axis
    real_inputs = {v for v in graph.inputs if v not in values}
    result = {}
    for node, axis in flips.items():
        data = node.inputs[0]
        assert data is not None
        up = set(ancestors([data]))
        if up & flips.keys():
            continue
        read = {data} | {v for n in up for v in n.inputs if v is not None}
        if read & real_inputs:
            result[node] = axis
    return flips, result


def _averages(graph: ir.Graph, values: _Constants) -> list[tuple[ir.Node, ir.Value, ir.Value]]:
    """(node, operand a, operand b) for every node that averages two tensors."""

    def other(node: ir.Node, target: float) -> ir.Value | None:
        a, b = node.inputs[0], node.inputs[1]
        if _is_scalar(values, b, target):
            return a
        if node.op_type == "Mul" and _is_scalar(values, a, target):
            return b
        return None

    found = []
    for node in graph:
        if len(node.inputs) != 2:
            continue
        x, y = node.inputs
        if x is None or y is None:
            continue
        if node.op_type == "Mean":
            found.append((node, x, y))
        elif node.op_type in ("Mul", "Div"):
            s = other(node, 0.5 if node.op_type == "Mul" else 2.0)
            add = s.producer() if s is not None else None
            if s is not None and add is not None and add.op_type == "Add" and len(s.uses()) == 1:
                a, b = add.inputs[0], add.inputs[1]
                if a is not None and b is not None:
                    found.append((node, a, b))
        elif node.op_type == "Add":
            halves = []
            for t in (x, y):
                mul = t.producer()
                if mul is None or mul.op_type != "Mul" or len(t.uses()) != 1:
                    break
                halves.append(other(mul, 0.5))
            if len(halves) == 2 and halves[0] is not None and halves[1] is not None:
                found.append((node, halves[0], halves[1]))
    return found


def find_ensembles(
    model: ir.Model, known: dict[str, ir.Value] | None = None
) -> tuple[list[Ensemble], list[str]]:
    """Structural candidates: averages of a plain branch and an input-flipped branch.

    `known` is `value_infos(model)` when the caller already has it."""
    graph = model.graph
    known = value_infos(model) if known is None else known
    all_flips, flips = _flips(graph, known)
    notes: list[str] = []
    if not flips:
        return [], notes
    values = _Constants(graph)
    result = []
    for avg, a, b in _averages(graph, values):
        up_a, up_b = set(ancestors([a])), set(ancestors([b]))
        fa, fb = up_a & flips.keys(), up_b & flips.keys()
        avg_out = name_of(avg.outputs[0])
        if fa and fb:
            back = all_flips.keys() - flips.keys()
            batched = _batched(graph, a, b, up_a, up_b, back)
            if batched is None:
                notes.append(f"average '{avg_out}' has the flip on both operands; left unchanged")
            else:
                plain, flipped, concat = batched
                used = _input_flips(graph, fa | fb, flips)
                result.append(Ensemble(avg_out, plain, flipped, used, concat))
            continue
        if not fa and not fb:
            continue
        plain_v, flipped_v, fl = (b, a, fa) if fa else (a, b, fb)
        used = _input_flips(graph, fl, flips)
        result.append(Ensemble(avg_out, name_of(plain_v), name_of(flipped_v), used))
    return result, notes


def _input_flips(
    graph: ir.Graph, nodes: set[ir.Node], flips: dict[ir.Node, int]
) -> list[tuple[str, int]]:
    """(flipped tensor, axis) of the given flip nodes, in graph order."""
    return [(name_of(n.inputs[0]), flips[n]) for n in graph if n in nodes and n.inputs[0]]


def _batched(
    graph: ir.Graph,
    a: ir.Value,
    b: ir.Value,
    up_a: set[ir.Node],
    up_b: set[ir.Node],
    back_flips: set[ir.Node],
) -> tuple[str, str, str] | None:
    """A flip test run as one batch: net(Concat([x, flip(x)], axis 0)), sliced, averaged.

    The plain operand is the one with no flip-back on its path; returns (plain, flipped,
    output of the Concat) or None.
    """
    ba, bb = bool(up_a & back_flips), bool(up_b & back_flips)
    if ba == bb:
        return None
    plain, flipped = (b, a) if ba else (a, b)
    inputs = {v for v in graph.inputs if not v.is_initializer()}
    up = set(ancestors([plain]))
    for node in graph:
        if node not in up or node.op_type != "Concat" or len(node.inputs) != 2:
            continue
        axis = node.attributes.get_int("axis")
        x, fx = node.inputs
        flip = fx.producer() if fx is not None else None
        if axis == 0 and x in inputs and flip is not None and flip.inputs[0] is x:
            return name_of(plain), name_of(flipped), name_of(node.outputs[0])
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
    model: ir.Model, proto: onnx.ModelProto, found: list[Ensemble]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values of every branch on sample inputs, and of the plain branches on flipped inputs."""
    from graphkit.runtime import ort as ort_rt

    cut = {data: axis for e in found for data, axis in e.input_flips}
    wanted = list(dict.fromkeys([t for e in found for t in (e.plain, e.flipped)]))
    feeds = ort_rt.sample_inputs(proto, seed=1)
    inner = [n for n in dict.fromkeys(wanted + list(cut)) if n not in feeds]
    first = {**ort_rt.run(proto, feeds, outputs=inner), **feeds}
    # Evaluate the plain branches with the flip-test inputs flipped: cut there as inputs.
    probe = model.clone()
    values = values_by_name(probe.graph)
    real_inputs = [n for n in ort_rt.graph_input_names(proto) if n not in cut]
    plains = list(dict.fromkeys(e.plain for e in found))
    outs = [typed_like(values[n], first[n]) for n in plains]
    ins = [typed_like(values[n], first[n]) for n in cut]
    ins += [v for v in probe.graph.inputs if name_of(v) in real_inputs]
    prune(probe, outs, ins)
    used = {name_of(v) for node in probe.graph for v in node.inputs if v is not None}
    for v in list(probe.graph.inputs):
        if name_of(v) not in used and name_of(v) not in plains:
            probe.graph.inputs.remove(v)
    names = {name_of(v) for v in probe.graph.inputs}
    flipped_feeds = {n: np.ascontiguousarray(np.flip(first[n], axis)) for n, axis in cut.items()}
    flipped_feeds.update({n: v for n, v in feeds.items() if n not in cut})
    second = ort_rt.run(to_proto(probe), {k: v for k, v in flipped_feeds.items() if k in names})
    return first, second


# --------------------------------------------------------------------------- the pass


@register("strip-flip-test", changes_outputs=True)
def strip_flip_test(model: ir.Model) -> PassResult:
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
    proto = to_proto(model)  # what onnxruntime runs to confirm the candidates
    separate = [e for e in found if e.batch_concat is None]
    confirmed: list[tuple[Ensemble, Transform]] = []
    if separate:
        first, second = _probe_values(model, proto, separate)
        for e in separate:
            _confirm(e, match_transform(second[e.plain], first[e.flipped]), confirmed, notes)
    batched = [e for e in found if e.batch_concat is not None]
    if batched:
        for e, t in _confirm_batched(model, proto, batched):
            _confirm(e, t, confirmed, notes)
    if not confirmed:
        return PassResult(model, False, notes + ["model unchanged"], None)

    old_outputs = [name_of(o) for o in graph.outputs]
    values = values_by_name(graph)
    avg_nodes = {values[e.avg_out].producer() for e, _ in confirmed}
    downstream = {name_of(o) for o in graph.outputs if avg_nodes.intersection(ancestors([o]))} - {
        e.avg_out for e, _ in confirmed
    }
    output_map = {e.avg_out: e.plain for e, _ in confirmed if e.avg_out in old_outputs}
    output_map.update({o: o for o in old_outputs if o not in output_map and o not in downstream})
    # An average inside the graph (decoding after it): check the kept plain tensor itself.
    output_map.update({e.plain: e.plain for e, _ in confirmed if e.avg_out not in old_outputs})

    before = len(graph)
    _rewire(graph, [e for e, _ in confirmed])
    removed = before - len(graph) + prune(model, list(graph.outputs))

    groups: dict[str, list[str]] = {}
    for e, t in confirmed:
        axes = ", ".join(str(a) for a in sorted({axis for _, axis in e.input_flips}))
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
    model: ir.Model, proto: onnx.ModelProto, found: list[Ensemble]
) -> list[tuple[Ensemble, Transform | None]]:
    """Batched flip test: run the stripped model on the flipped input and match."""
    from graphkit.runtime import ort as ort_rt

    stripped = model.clone()
    _rewire(stripped.graph, found)
    kept = values_by_name(stripped.graph)
    outs = [e.avg_out for e in found]
    feeds = ort_rt.sample_inputs(proto, seed=1)
    flipped_feeds = dict(feeds)
    values = values_by_name(model.graph)
    for e in found:
        assert e.batch_concat is not None
        concat = values[e.batch_concat].producer()
        assert concat is not None and concat.inputs[0] is not None
        x = name_of(concat.inputs[0])
        axis = next(a for data, a in e.input_flips if data == x)
        flipped_feeds[x] = np.ascontiguousarray(np.flip(feeds[x], axis))
    try:
        missing = [n for n in outs if n not in kept]
        if missing:  # an average inside the graph: its readers now read the plain tensor
            raise GraphkitError(f"'{missing[0]}' is gone from the stripped model")
        prune(stripped, [kept[n] for n in outs])
        old = ort_rt.run(proto, feeds, outputs=[e.flipped for e in found])
        new = ort_rt.run(to_proto(stripped), flipped_feeds, outputs=outs)
    except GraphkitError:  # e.g. a Reshape that hard-codes the batch of two
        return [(e, None) for e in found]
    return [(e, match_transform(new[e.avg_out], old[e.flipped])) for e in found]


def _rewire(graph: ir.Graph, ensembles: list[Ensemble]) -> None:
    """Make every reader of each average read the plain tensor; drop the average nodes.

    For a batched flip test the network is fed the plain input instead of the Concat. An
    average that is a graph output passes its name on to the plain tensor (or, when that is
    a graph input, output or weight, to an Identity of it).
    """
    values = values_by_name(graph)
    for e in ensembles:
        if e.batch_concat is not None:
            out = values[e.batch_concat]
            concat = out.producer()
            assert concat is not None and concat.inputs[0] is not None
            out.replace_all_uses_with(concat.inputs[0])
    averages = []
    for e in ensembles:
        avg, plain = values[e.avg_out], values[e.plain]
        node = avg.producer()
        assert node is not None
        averages.append(node)
        if not avg.is_graph_output():
            avg.replace_all_uses_with(plain)
            continue
        if not bypass(graph, avg, plain):  # the output keeps its name, type and shape
            _identity(graph, node, avg, plain)
    remove_nodes(graph, averages)


def _identity(graph: ir.Graph, where: ir.Node, old: ir.Value, source: ir.Value) -> None:
    """An Identity of `source` (placed before `where`) takes over graph output `old`."""
    node = ir.Node("", "Identity", [source], num_outputs=1)
    graph.insert_before(where, node)
    new = node.outputs[0]
    new.type, new.shape = old.type, old.shape
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = None
    new.name = name
