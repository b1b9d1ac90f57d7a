"""fold-constants and simplify: replace computations on constants by their results."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphkit import weights
from graphkit.errors import GraphkitError
from graphkit.graph import (
    GraphIndex,
    constant_node_value,
    has_subgraph,
    keep_only,
    plural,
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


def _shape_value(node: onnx.NodeProto, shape: list[int | None] | None) -> np.ndarray | None:
    """The value of Shape/Size on a tensor whose shape is fully known."""
    if shape is None or any(d is None for d in shape):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod([int(d or 0) for d in shape], dtype=np.int64)), dtype=np.int64)
    rank = len(shape)
    start, end = 0, rank
    for a in node.attribute:
        if a.name == "start":
            start = a.i
        elif a.name == "end":
            end = a.i
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    wanted: list[str],
    known: dict[str, onnx.TensorProto],
) -> dict[str, np.ndarray]:
    """Run the constant nodes in onnxruntime (without optimizations) and return `wanted`."""
    from graphkit.runtime.ort import make_session

    outputs = [helper.make_empty_tensor_value_info(name) for name in wanted]  # ORT infers types
    g = helper.make_graph(nodes, "fold", [], outputs, initializer=list(known.values()))
    sub = helper.make_model(g, opset_imports=list(model.opset_import))
    sub.ir_version = max(model.ir_version, 4)
    sess = make_session(sub, threads=1, optimize=False)
    values = sess.run(wanted, {})
    return dict(zip(wanted, values))


_SIMPLE = {"Constant", "ConstantOfShape", "Identity", "Unsqueeze", "Squeeze"}


def _evaluate_simple(
    plan: list[onnx.NodeProto],
    wanted: list[str],
    known: dict[str, onnx.TensorProto],
    idx: GraphIndex,
) -> dict[str, np.ndarray] | None:
    """numpy for plans made only of trivial ops (weights stored as ConstantOfShape, Constant
    nodes): exact, and no onnxruntime session to build. None when another op is involved."""
    if any(n.op_type not in _SIMPLE or n.domain for n in plan):
        return None
    env: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in env:
            env[name] = weights.tensor_array(known[name]) if name in known else idx.const(name)  # type: ignore[assignment]
        return env[name]

    for node in plan:
        op = node.op_type
        if op == "Constant":
            out = constant_node_value(node)
        elif op == "ConstantOfShape":
            value = np.zeros(1, np.float32)
            for a in node.attribute:
                if a.name == "value":
                    value = numpy_helper.to_array(a.t)
            out = np.full(
                tuple(int(d) for d in get(node.input[0])), value.reshape(-1)[0], value.dtype
            )
        elif op == "Identity":
            out = get(node.input[0])
        else:
            x = get(node.input[0])
            found = [a.ints for a in node.attribute if a.name == "axes"]
            axes: list[int] | None
            if found:
                axes = list(found[0])
            elif len(node.input) > 1 and node.input[1]:
                axes = [int(v) for v in get(node.input[1]).reshape(-1)]
            else:
                axes = None
            if op == "Squeeze":
                out = np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)
            else:
                if axes is None:  # Unsqueeze needs its axes: not foldable
                    return None
                rank = x.ndim + len(axes)
                out = x
                for a in sorted(a + rank if a < 0 else a for a in axes):
                    out = np.expand_dims(out, a)
        if out is None:
            return None
        env[node.output[0]] = np.asarray(out)
    return {name: env[name] for name in wanted}


@register("fold-constants")
def fold_constants(
    model: onnx.ModelProto,
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
        if not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
            break  # constness propagates in one ordered sweep; only shapes can add more
    if folded:
        notes.insert(0, f"folded {plural(folded, 'node')} into constants")
    return PassResult(model, changed, notes)


def _fold_once(
    model: onnx.ModelProto,
    *,
    max_size_mb: float = 64.0,
    fold_shapes: bool = True,
    skip_ops: list[str] = ["DequantizeLinear", "QuantizeLinear"],  # noqa: B006
) -> PassResult:
    """One round of folding (see fold_constants)."""
    g = model.graph
    idx = GraphIndex(g)
    limit = int(max_size_mb * 1024 * 1024)
    skip = set(skip_ops) | _NEVER_FOLD
    has_shape_ops = any(n.op_type in ("Shape", "Size") for n in g.node)
    shapes = value_shapes(model) if fold_shapes and has_shape_ops else {}

    const_names = {n for n in idx.inits if n not in idx.input_names}
    folded_values: dict[str, np.ndarray] = {}
    plan: list[onnx.NodeProto] = []  # nodes to evaluate, in graph order
    constant_nodes = 0
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in skip or not node.output:
            continue
        if has_subgraph(node):
            continue
        if node.op_type in ("Shape", "Size") and fold_shapes and node.input[0] not in const_names:
            value = _shape_value(node, shapes.get(node.input[0]))
            if value is not None:
                folded_values[node.output[0]] = value
                const_names.add(node.output[0])
            continue
        ins = [i for i in node.input if i]
        if all(i in const_names for i in ins):
            plan.append(node)
            const_names.update(o for o in node.output if o)
            constant_nodes += node.op_type == "Constant"
    if not plan and not folded_values:
        return PassResult(model, False, [])

    # Which constant results are read by something that stays (or are graph outputs)?
    planned = {id(n) for n in plan}
    produced_by_plan = {o for n in plan for o in n.output if o}
    boundary: list[str] = []
    for node in g.node:
        if id(node) in planned:
            continue
        for i in node.input:
            if i in produced_by_plan or i in folded_values:
                boundary.append(i)
    boundary += [o.name for o in g.output if o.name in produced_by_plan or o.name in folded_values]
    boundary = list(dict.fromkeys(boundary))
    needed_inits: dict[str, onnx.TensorProto] = {}
    for node in plan:
        for i in node.input:
            if i in idx.inits and i not in produced_by_plan:
                needed_inits[i] = idx.inits[i]
    for name, value in folded_values.items():
        needed_inits[name] = numpy_helper.from_array(value, name)
    to_eval = [b for b in boundary if b in produced_by_plan]
    values = dict(folded_values)
    if to_eval:
        try:
            simple = _evaluate_simple(plan, to_eval, needed_inits, idx)
            values.update(
                simple if simple is not None else _evaluate(model, plan, to_eval, needed_inits)
            )
        except GraphkitError as exc:
            raise GraphkitError(f"cannot evaluate the constant subgraphs ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot infer/evaluate"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GraphkitError(f"cannot evaluate the constant subgraphs: {first}") from None

    # Decide what to store: skip results that bloat (big and bigger than their sources).
    input_bytes: dict[str, int] = {}
    for node in plan:
        src = sum(
            _nbytes(idx.inits[i]) if i in idx.inits else input_bytes.get(i, 0)
            for i in node.input
            if i
        )
        for o in node.output:
            input_bytes[o] = src
    store: dict[str, np.ndarray] = {}
    kept_big = []
    for name in boundary:
        if name not in values:
            continue
        arr = np.asarray(values[name])
        if arr.nbytes > limit and arr.nbytes > input_bytes.get(name, 0):
            kept_big.append(name)
            continue
        store[name] = arr
    # Nodes that must stay: those producing a kept-big tensor, and their constant ancestors.
    keep_nodes: set[int] = set()
    if kept_big:
        need = set(kept_big)
        for node in reversed(plan):
            if any(o in need for o in node.output):
                keep_nodes.add(id(node))
                need.update(i for i in node.input if i)
        for node in plan:
            if id(node) in keep_nodes:
                for o in node.output:
                    store.pop(o, None)
                for i in node.input:
                    if i in folded_values:
                        store[i] = folded_values[i]
    removed_ops: dict[str, int] = {}
    remove = []
    for node in plan:
        if id(node) not in keep_nodes:
            remove.append(node)
            removed_ops[node.op_type] = removed_ops.get(node.op_type, 0) + 1
    shape_nodes = [
        n
        for n in g.node
        if n.op_type in ("Shape", "Size") and n.output and n.output[0] in folded_values
    ]
    for n in shape_nodes:
        removed_ops[n.op_type] = removed_ops.get(n.op_type, 0) + 1
    # Graph outputs that became constants stay computed by a Constant node (not initializers).
    out_names = {o.name for o in g.output}
    new_nodes = []
    for name, arr in store.items():
        if name in out_names:
            new_nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=f"{name}_const",
                    value=numpy_helper.from_array(arr, name),
                )
            )
    for name, arr in store.items():
        if name not in out_names:
            if name in idx.inits:
                continue
            g.initializer.append(numpy_helper.from_array(arr, name))
    idx.remove_nodes(remove + shape_nodes)
    g.node.extend(new_nodes)
    # results computed from graph inputs' shapes are now fixed: drop their stale value_info
    stored = set(store)
    keep_only(g.value_info, lambda vi: vi.name not in stored)
    # drop initializers nothing reads any more
    used = {i for n in g.node for i in n.input} | out_names
    keep_only(g.initializer, lambda i: i.name in used or i.name in idx.input_names)
    if new_nodes:
        from graphkit.graph import toposort

        toposort(g)

    n_removed = len(remove) + len(shape_nodes) - len(new_nodes)
    notes = []
    if removed_ops:
        notes.append(f"folded {len(remove) + len(shape_nodes)} nodes")
    if kept_big:
        notes.append(
            f"kept {plural(len(kept_big), 'large constant result')} unfolded (> {max_size_mb:g} MB)"
        )
    changed = n_removed > 0 or bool(store)
    return PassResult(
        model, changed, notes if changed else [n for n in notes if n.startswith("kept")]
    )


def _nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


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
    model: onnx.ModelProto,
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

    weights.materialize(model)  # onnxsim reads whole protobufs (and stops at 2 GB anyway)
    before = len(model.graph.node)
    try:
        new, _ok = onnxsim.simplify(
            model,
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
    changed = _structure(new) != _structure(model)
    notes = [f"onnxsim: {before} -> {after} nodes"] if changed else []
    return PassResult(new, changed, notes)
