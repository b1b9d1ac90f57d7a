"""fold-constants and simplify: replace computations on constants by their results."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from graphkit import weights
from graphkit.errors import GraphkitError
from graphkit.irgraph import (
    as_tensor,
    drop_unused_initializers,
    node_subgraphs,
    plural,
    to_ir,
    to_proto,
    value_shapes,
)
from graphkit.passes.base import PassResult, register

# Ops whose result is not a function of their inputs, or that must stay for backends.
_NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "SequenceConstruct",
    "SequenceEmpty",
}
_SHAPE_OPS = ("Shape", "Size")


def _nbytes(tensor: ir.TensorProtocol) -> int:
    """Size in bytes without reading the data (strings count as pointers, as numpy does)."""
    try:
        return int(tensor.nbytes)
    except TypeError:
        return int(np.prod(tensor.shape.numpy(), dtype=np.int64)) * 8


def _constant_node_value(node: ir.Node) -> np.ndarray | None:
    """The value of a Constant node, whichever attribute holds it (None for sparse/strings)."""
    attrs = node.attributes
    if "value" in attrs:
        return attrs["value"].value.numpy()  # .value: as_tensor() checks a slow Protocol
    if "value_float" in attrs:
        return np.array(attrs["value_float"].as_float(), dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"].as_floats()), dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"].as_int(), dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"].as_ints()), dtype=np.int64)
    return None


def _shape_value(node: ir.Node, shape: list[int | None] | None) -> np.ndarray | None:
    """The value of Shape/Size on a tensor whose shape is fully known."""
    if shape is None or any(d is None for d in shape):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod([int(d or 0) for d in shape], dtype=np.int64)), dtype=np.int64)
    rank = len(shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(
    model: ir.Model,
    plan: list[ir.Node],
    wanted: list[ir.Value],
    known: dict[ir.Value, onnx.TensorProto],
) -> dict[ir.Value, np.ndarray]:
    """Run the constant nodes in onnxruntime (without optimizations) and return `wanted`.

    Weights left on disk go in as references to their file, which onnxruntime maps."""
    from graphkit.runtime.ort import make_session

    names = [v.name or "" for v in wanted]
    outputs = [helper.make_empty_tensor_value_info(name) for name in names]  # ORT infers types
    nodes = [ir.serde.serialize_node(n) for n in plan]
    g = helper.make_graph(nodes, "fold", [], outputs, initializer=list(known.values()))
    opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    sub = helper.make_model(g, opset_imports=opsets)
    sub.ir_version = max(model.ir_version, 4)
    sess = make_session(sub, threads=1, optimize=False)
    values = sess.run(names, {})
    return dict(zip(wanted, values))


_SIMPLE = {"Constant", "ConstantOfShape", "Identity", "Unsqueeze", "Squeeze"}


def _known_array(value: ir.Value, folded: dict[ir.Value, np.ndarray]) -> np.ndarray:
    """A plan input's value: a folded shape or an initializer (a weight left on disk is
    copied out of its mapping, so a stored result never points into the source file)."""
    if value in folded:
        return folded[value]
    tensor = value.const_value
    if tensor is None:
        raise GraphkitError(f"initializer '{value.name}' has no value")
    array = tensor.numpy()
    return np.array(array) if isinstance(tensor, ir.ExternalTensor) else array


def _evaluate_simple(
    plan: list[ir.Node],
    wanted: list[ir.Value],
    folded: dict[ir.Value, np.ndarray],
) -> dict[ir.Value, np.ndarray] | None:
    """numpy for plans made only of trivial ops (weights stored as ConstantOfShape, Constant
    nodes): exact, and no onnxruntime session to build. None when another op is involved."""
    if any(n.op_type not in _SIMPLE or n.domain for n in plan):
        return None
    env: dict[ir.Value, np.ndarray] = {}

    def get(value: ir.Value | None) -> np.ndarray:
        assert value is not None
        if value not in env:
            env[value] = _known_array(value, folded)
        return env[value]

    for node in plan:
        out = _simple_op(node, get)
        if out is None:
            return None
        env[node.outputs[0]] = np.asarray(out)
    return {v: env[v] for v in wanted}


def _simple_op(node: ir.Node, get: Callable[[ir.Value | None], np.ndarray]) -> np.ndarray | None:
    """One node of a trivial plan in numpy, or None when it cannot be done here."""
    op = node.op_type
    if op == "Constant":
        return _constant_node_value(node)
    if op == "ConstantOfShape":
        attr = node.attributes.get("value")
        value = attr.value.numpy() if attr is not None else np.zeros(1, np.float32)
        shape = tuple(int(d) for d in get(node.inputs[0]))
        return np.full(shape, value.reshape(-1)[0], value.dtype)
    if op == "Identity":
        return get(node.inputs[0])
    x = get(node.inputs[0])
    found = node.attributes.get("axes")
    axes: list[int] | None
    if found is not None:
        axes = list(found.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = [int(v) for v in get(node.inputs[1]).reshape(-1)]
    else:
        axes = None
    if op == "Squeeze":
        return np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)
    if axes is None:  # Unsqueeze needs its axes: not foldable
        return None
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(a + rank if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return out


@register("fold-constants")
def fold_constants(
    model: ir.Model,
    *,
    max_size_mb: float = 64.0,
    fold_shapes: bool = True,
    skip_ops: list[str] = ["DequantizeLinear", "QuantizeLinear"],  # noqa: B006
) -> PassResult:
    """Evaluate nodes whose inputs are all constants and store their results as weights.

    Our own pass, on onnxruntime: it folds in one batched run (fast on large models),
    turns Constant nodes into initializers, and with `fold_shapes` replaces Shape/Size of
    tensors whose shape is fully known by its value, which lets whole shape-computing
    subgraphs (tf2onnx "SAME" padding, reshape targets) fold away; it repeats until
    nothing more folds. A result larger than `max_size_mb` that is also larger than the
    constants it is computed from is NOT stored (ConstantOfShape, Tile, Expand would
    otherwise bloat the file); the node stays. `skip_ops` are never folded: by default
    Q/DQ, so that weight quantization nodes that int8 backends look for stay in place.
    """
    changed, notes, folded = False, [], 0
    for _ in range(8):
        result = _fold_once(
            model, max_size_mb=max_size_mb, fold_shapes=fold_shapes, skip_ops=skip_ops
        )
        for note in result.notes:
            if note.startswith("folded "):
                folded += int(note.split()[1])
            elif note not in notes:
                notes.append(note)
        if not result.changed:
            break
        changed = True
        if not any(n.op_type in _SHAPE_OPS for n in model.graph):
            break  # constness propagates in one ordered sweep; only shapes can add more
    if folded:
        notes.insert(0, f"folded {plural(folded, 'node')} into constants")
    return PassResult(model, changed, notes)


class _Plan:
    """What one round folds: the nodes to evaluate (graph order) and the Shape/Size nodes
    whose value the inferred shapes already give."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []
        self.shape_nodes: list[ir.Node] = []
        self.folded: dict[ir.Value, np.ndarray] = {}  # Shape/Size outputs -> their value

    def produced(self) -> list[ir.Value]:
        return [o for n in self.nodes for o in n.outputs]


def _make_plan(model: ir.Model, *, fold_shapes: bool, skip: set[str]) -> _Plan:
    """One ordered sweep: a node is constant when all its inputs are (ignoring subgraph
    holders, other domains and `skip`)."""
    g = model.graph
    has_shape_ops = any(n.op_type in _SHAPE_OPS for n in g)
    shapes = value_shapes(model) if fold_shapes and has_shape_ops else {}
    const = {
        v for v in g.initializers.values() if not v.is_graph_input() and v.const_value is not None
    }
    plan = _Plan()
    for node in g:
        if node.domain != "" or node.op_type in skip or not node.outputs:
            continue
        if node_subgraphs(node):
            continue
        x = node.inputs[0] if node.inputs else None
        if node.op_type in _SHAPE_OPS and fold_shapes and x not in const:
            value = _shape_value(node, shapes.get(x.name or "") if x is not None else None)
            if value is not None:
                plan.folded[node.outputs[0]] = value
                plan.shape_nodes.append(node)
                const.add(node.outputs[0])
            continue
        if all(i in const for i in node.inputs if i is not None):
            plan.nodes.append(node)
            const.update(node.outputs)
    return plan


def _boundary(g: ir.Graph, plan: _Plan) -> list[ir.Value]:
    """Constant results something that stays reads (a node outside the plan, a subgraph, or
    being a graph output), in the order the graph reads them."""
    planned = {id(n) for n in plan.nodes}
    candidates = plan.produced() + list(plan.folded)
    outside = {
        v
        for v in candidates
        if v.is_graph_output() or any(id(u.node) not in planned for u in v.uses())
    }
    order: list[ir.Value] = []
    for node in g:
        if id(node) not in planned:
            order += [i for i in node.inputs if i is not None and i in outside]
    order += [o for o in g.outputs if o in outside]
    order += [v for v in candidates if v in outside]  # read only inside subgraphs
    return list(dict.fromkeys(order))


def _compute(model: ir.Model, plan: _Plan, to_eval: list[ir.Value]) -> dict[ir.Value, np.ndarray]:
    """The values of `to_eval`: numpy for trivial plans, else one onnxruntime run."""
    values = dict(plan.folded)
    if not to_eval:
        return values
    produced = set(plan.produced())
    known: dict[ir.Value, onnx.TensorProto] = {}
    try:
        simple = _evaluate_simple(plan.nodes, to_eval, plan.folded)
        if simple is None:
            for node in plan.nodes:
                for i in node.inputs:
                    if i is not None and i.is_initializer() and i not in produced:
                        assert i.const_value is not None
                        known[i] = ir.serde.serialize_tensor(i.const_value)
                        known[i].name = i.name or ""
            for v, arr in plan.folded.items():
                known[v] = numpy_helper.from_array(arr, v.name or "")
            simple = _evaluate(model, plan.nodes, to_eval, known)
        values.update(simple)
    except GraphkitError as exc:
        raise GraphkitError(f"cannot evaluate the constant subgraphs ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot infer/evaluate"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphkitError(f"cannot evaluate the constant subgraphs: {first}") from None
    return values


def _source_bytes(plan: _Plan) -> dict[ir.Value, int]:
    """For each planned result, the bytes of the initializers it is computed from (as
    summed along the plan: what storing the result may be compared with)."""
    sizes: dict[ir.Value, int] = {}
    for node in plan.nodes:
        src = 0
        for i in node.inputs:
            if i is None:
                continue
            if i.is_initializer() and i.const_value is not None:
                src += _nbytes(i.const_value)
            else:
                src += sizes.get(i, 0)
        for o in node.outputs:
            sizes[o] = src
    return sizes


def _fold_once(
    model: ir.Model,
    *,
    max_size_mb: float = 64.0,
    fold_shapes: bool = True,
    skip_ops: list[str] = ["DequantizeLinear", "QuantizeLinear"],  # noqa: B006
) -> PassResult:
    """One round of folding (see fold_constants)."""
    g = model.graph
    limit = int(max_size_mb * 1024 * 1024)
    plan = _make_plan(model, fold_shapes=fold_shapes, skip=set(skip_ops) | _NEVER_FOLD)
    if not plan.nodes and not plan.folded:
        return PassResult(model, False, [])
    boundary = _boundary(g, plan)
    produced = set(plan.produced())
    values = _compute(model, plan, [b for b in boundary if b in produced])

    # Decide what to store: skip results that bloat (big and bigger than their sources).
    input_bytes = _source_bytes(plan)
    store: dict[ir.Value, np.ndarray] = {}
    kept_big = []
    for v in boundary:
        if v not in values:
            continue
        arr = np.asarray(values[v])
        if arr.nbytes > limit and arr.nbytes > input_bytes.get(v, 0):
            kept_big.append(v)
            continue
        store[v] = arr
    keep_nodes = _keep_for(plan, kept_big, store)
    remove = [n for n in plan.nodes if id(n) not in keep_nodes]
    new_nodes = _store(g, store)
    drop = remove + plan.shape_nodes
    if drop:
        g.remove(drop, safe=True)
    drop_unused_initializers(g)

    n_removed = len(drop) - len(new_nodes)
    notes = []
    if drop:
        notes.append(f"folded {len(drop)} nodes")
    if kept_big:
        notes.append(
            f"kept {plural(len(kept_big), 'large constant result')} unfolded (> {max_size_mb:g} MB)"
        )
    changed = n_removed > 0 or bool(store)
    return PassResult(
        model, changed, notes if changed else [n for n in notes if n.startswith("kept")]
    )


def _keep_for(plan: _Plan, kept_big: list[ir.Value], store: dict[ir.Value, np.ndarray]) -> set[int]:
    """Nodes that must stay: those producing a kept-big tensor, and their constant
    ancestors; their outputs are not stored, the folded shapes they read are."""
    keep: set[int] = set()
    if not kept_big:
        return keep
    need = set(kept_big)
    for node in reversed(plan.nodes):
        if any(o in need for o in node.outputs):
            keep.add(id(node))
            need.update(i for i in node.inputs if i is not None)
    for node in plan.nodes:
        if id(node) in keep:
            for o in node.outputs:
                store.pop(o, None)
            for i in node.inputs:
                if i is not None and i in plan.folded:
                    store[i] = plan.folded[i]
    return keep


def _store(g: ir.Graph, store: dict[ir.Value, np.ndarray]) -> list[ir.Node]:
    """Make every reader of each stored value read its result instead: a new initializer of
    the same name, or, for a graph output, a Constant node in place of its producer (a graph
    output stays computed by a node). Returns the Constant nodes made."""
    new_nodes = []
    for old, arr in store.items():
        name = old.name or ""
        if old.is_initializer():
            continue
        if old.is_graph_output():
            tensor = as_tensor(arr, name)
            node = ir.Node(
                "",
                "Constant",
                [],
                attributes=[ir.AttrTensor("value", tensor)],
                name=f"{name}_const",
            )
            new = node.outputs[0]
            # the graph output keeps its declared type and shape
            new.type = old.type if old.type is not None else ir.TensorType(tensor.dtype)
            new.shape = old.shape
            producer = old.producer()
            assert producer is not None
            g.insert_before(producer, node)
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            old.name = None
            new.name = name
            new_nodes.append(node)
            continue
        value = ir.Value(name=name, shape=ir.Shape(arr.shape))
        value.const_value = as_tensor(arr, name)
        value.type = ir.TensorType(value.const_value.dtype)
        old.replace_all_uses_with(value)
        g.register_initializer(value)
    return new_nodes


def _structure(model: onnx.ModelProto) -> tuple:
    """Nodes and weight names/shapes: what a simplifier changes (cheap, any model size)."""
    g = model.graph
    return (
        [n.SerializeToString(deterministic=True) for n in g.node],
        [(i.name, tuple(i.dims)) for i in g.initializer],
        [vi.SerializeToString(deterministic=True) for vi in list(g.input) + list(g.output)],
    )


@register("simplify")
def simplify(
    model: ir.Model,
    *,
    skip_fuse_bn: bool = False,
    skip_constant_folding: bool = False,
    skip_shape_inference: bool = False,
    skipped_optimizers: list[str] = ["fuse_pad_into_pool"],  # noqa: B006 - never mutated
    perform_optimization: bool = True,
    tensor_size_threshold: str = "1.5GB",
    include_subgraph: bool = False,
) -> PassResult:
    """Run onnxsim (onnx-simplifier) with its options.

    Wraps the library unchanged: onnxsim folds constants, infers shapes and runs
    onnxoptimizer's fusions. Use it as an alternative to graphkit's own fold-constants and
    fuse-* passes, or after them. `skip_fuse_bn` keeps BatchNormalization nodes (useful
    before quantization-aware flows that want them); `skipped_optimizers` names
    onnxoptimizer passes to leave out. By default that is fuse_pad_into_pool: onnxsim 0.8
    folds a Pad into an AveragePool even when the resulting pads reach the window size,
    which onnxruntime refuses to load (found by tests/test_passes_properties.py; graphkit's
    own fuse-pad checks it). `tensor_size_threshold`
    is onnxsim's limit above which a folded constant is not stored (like "1.5GB", "10MB").
    onnxsim's own output check is off: the pipeline verifies every pass itself.
    """
    import onnxsim

    proto = to_proto(model)
    weights.materialize(proto)  # onnxsim reads whole protobufs (and stops at 2 GB anyway)
    before = len(proto.graph.node)
    try:
        new, _ok = onnxsim.simplify(
            proto,
            check_n=0,
            perform_optimization=perform_optimization,
            skip_fuse_bn=skip_fuse_bn,
            skipped_optimizers=list(skipped_optimizers),
            skip_constant_folding=skip_constant_folding,
            skip_shape_inference=skip_shape_inference,
            include_subgraph=include_subgraph,
            tensor_size_threshold=tensor_size_threshold,
        )
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot infer/evaluate"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphkitError(f"onnxsim failed: {first}") from None
    after = len(new.graph.node)
    changed = _structure(new) != _structure(proto)
    if not changed:  # the IR as it came: weights left on disk stay there
        return PassResult(model, False, [])
    return PassResult(to_ir(new), True, [f"onnxsim: {before} -> {after} nodes"])
