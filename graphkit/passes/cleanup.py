"""cleanup: remove what cannot change the outputs, and put the nodes in order."""

from __future__ import annotations

import onnx

from graphkit import weights
from graphkit.graph import (
    GraphIndex,
    keep_only,
    node_reads,
    plural,
    toposort,
    unique_name,
)
from graphkit.passes.base import PassResult, register

# Ops that copy their input in inference; Dropout only when its mask output is unused.
_NOOPS = {"Identity", "Dropout"}


def remove_noops(idx: GraphIndex) -> int:
    """Bypass Identity and inference-mode Dropout nodes; returns how many went."""
    dead = []
    for node in list(idx.graph.node):
        if node.op_type not in _NOOPS or node.domain not in ("", "ai.onnx"):
            continue
        if not node.input or not node.input[0] or not node.output:
            continue
        if node.op_type == "Dropout":
            if len(node.output) > 1 and node.output[1] and idx.n_uses(node.output[1]):
                continue
            if len(node.input) > 2 and node.input[2]:
                mode = idx.const(node.input[2])
                if mode is None or bool(mode):
                    continue  # training_mode on (or unknown): it really drops
        src, dst = node.input[0], node.output[0]
        if dst in idx.output_names and (
            src in idx.output_names or src in idx.input_names or src in idx.inits
        ):
            continue  # renaming would clash with another interface name: keep the node
        if idx.bypass(dst, src):
            dead.append(node)
    idx.remove_nodes(dead)
    return len(dead)


def remove_dead_nodes(idx: GraphIndex) -> int:
    """Drop nodes none of whose outputs reach a graph output (any node order)."""
    live: set[int] = set()
    stack = [idx.producer[o] for o in idx.output_names if o in idx.producer]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack.extend(idx.producer[i] for i in node_reads(node) if i in idx.producer)
    return idx.remove_nodes([n for n in idx.graph.node if id(n) not in live])


def remove_unused(idx: GraphIndex, inputs: bool) -> tuple[int, int]:
    g = idx.graph
    used = set(idx.output_names)
    for node in g.node:
        used.update(node_reads(node))
    n_inits = keep_only(g.initializer, lambda i: i.name in used)
    n_inputs = keep_only(g.input, lambda i: i.name in used) if inputs else 0
    keep_only(g.value_info, lambda vi: vi.name in used)
    idx.inits = {i.name: i for i in g.initializer}
    idx.input_names = {i.name for i in g.input}
    return n_inits, n_inputs


def detach_initializers(model: onnx.ModelProto) -> int:
    """Stop listing initializers as graph inputs (IR < 4 exporters did), so they fold.

    An initializer listed as an input can be overridden at run time, so no pass may treat
    it as a constant; no runtime graphkit targets overrides weights, so we fix the weights
    and raise the IR version to 4, the first that allows it.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    n = keep_only(g.input, lambda i: i.name not in inits)
    if n:
        model.ir_version = max(model.ir_version, 4)
    return n


def _unique_node_names(graph: onnx.GraphProto) -> int:
    """Give every node a distinct, non-empty name (backends and reports key on it)."""
    seen: set[str] = set()
    changed = 0
    for node in graph.node:
        hint = node.name or f"{node.op_type}_{node.output[0] if node.output else ''}"
        name = unique_name(hint, seen)
        if name != node.name:
            node.name = name
            changed += 1
    return changed


@register("cleanup")
def cleanup(
    model: onnx.ModelProto,
    *,
    remove_identity: bool = True,
    remove_unused_inputs: bool = True,
    detach_weights: bool = True,
    name_nodes: bool = True,
) -> PassResult:
    """Remove dead nodes, unused initializers and inputs, Identity and Dropout; toposort.

    Our own pass (onnxoptimizer's eliminate_* passes do the same job but rename graph
    outputs when an Identity feeds one; here an output keeps its name: the node that
    computes it writes it directly). Dropout goes only in inference mode and when its mask
    is unused. `detach_weights` stops listing initializers as graph inputs (old IR 3 models
    such as the onnx "light" zoo do), which is what lets fold-constants and the fusions see
    the weights as constants. `name_nodes` gives unnamed or duplicate nodes unique names.
    Finally the nodes are sorted topologically.
    """
    g = model.graph
    notes: list[str] = []
    n_detached = detach_initializers(model) if detach_weights else 0
    idx = GraphIndex(g)
    n_noop = remove_noops(idx) if remove_identity else 0
    n_dead = remove_dead_nodes(idx)
    n_inits, n_inputs = remove_unused(idx, remove_unused_inputs)
    sorted_ = toposort(g)
    n_named = _unique_node_names(g) if name_nodes else 0
    if n_noop:
        notes.append(f"removed {plural(n_noop, 'Identity/Dropout node')}")
    if n_dead:
        notes.append(f"removed {plural(n_dead, 'dead node')}")
    if n_inits:
        notes.append(f"removed {plural(n_inits, 'unused initializer')}")
    if n_inputs:
        notes.append(f"removed {plural(n_inputs, 'unused input')}")
    if n_detached:
        notes.append(f"stopped listing {plural(n_detached, 'initializer')} as graph inputs")
    if sorted_:
        notes.append("sorted the nodes topologically")
    if n_named:
        notes.append(f"named {plural(n_named, 'node')}")
    return PassResult(model, bool(notes), notes)


def _attrs_key(node: onnx.NodeProto) -> bytes:
    return b"|".join(
        a.SerializeToString(deterministic=True)
        for a in sorted(node.attribute, key=lambda a: a.name)
    )


@register("dedupe")
def dedupe(model: onnx.ModelProto) -> PassResult:
    """Merge identical constants, then identical nodes reading the same inputs.

    Our own pass (common-subexpression elimination, as onnxsim does): two initializers with
    the same type, shape and bytes become one; two nodes with the same op, attributes and
    inputs become one (repeated until stable). Nodes with side effects or randomness and
    nodes holding subgraphs are never merged.
    """

    g = model.graph
    idx = GraphIndex(g)
    # 1. constants
    by_key: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    candidates = [
        i for i in g.initializer if i.name not in idx.input_names and i.name not in idx.output_names
    ]
    counts: dict[tuple, int] = {}
    for init in candidates:
        k = (init.data_type, tuple(init.dims))
        counts[k] = counts.get(k, 0) + 1
    for init in candidates:
        if counts[(init.data_type, tuple(init.dims))] < 2:
            continue
        key = (init.data_type, tuple(init.dims), weights.tensor_digest(init))
        if key in by_key:
            alias[init.name] = by_key[key]
        else:
            by_key[key] = init.name
    if alias:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        keep_only(g.initializer, lambda i: i.name not in alias)
        idx.refresh()
    # 2. nodes, in topological order so merged inputs make later nodes identical
    skip = {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
    seen: dict[tuple, onnx.NodeProto] = {}
    dead = []
    rename: dict[str, str] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        if node.op_type in skip or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            continue
        node_key = (
            node.domain,
            node.op_type,
            tuple(node.input),
            len(node.output),
            _attrs_key(node),
        )
        first = seen.get(node_key)
        if first is None:
            seen[node_key] = node
            continue
        if any(o in idx.output_names for o in node.output if o):
            continue
        if any(a and not b for a, b in zip(node.output, first.output)):
            continue
        rename.update({a: b for a, b in zip(node.output, first.output) if a})
        dead.append(node)
    idx.remove_nodes(dead)
    notes = []
    if alias:
        notes.append(f"merged {plural(len(alias), 'duplicate constant')}")
    if dead:
        notes.append(f"merged {plural(len(dead), 'duplicate node')}")
    return PassResult(model, bool(notes), notes)
