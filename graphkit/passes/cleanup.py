"""cleanup: remove what cannot change the outputs, and put the nodes in order."""

from __future__ import annotations

import onnx_ir as ir

from graphkit.irgraph import (
    bypass,
    const_array,
    n_uses,
    node_subgraphs,
    plural,
    reads,
    remove_nodes,
    tensor_digest,
)
from graphkit.passes.base import PassResult, register

# Ops that copy their input in inference; Dropout only when its mask output is unused.
_NOOPS = {"Identity", "Dropout"}


def _is_noop(node: ir.Node) -> bool:
    """An Identity, or a Dropout in inference mode whose mask nobody reads."""
    if node.op_type not in _NOOPS or node.domain != "":
        return False
    if not node.inputs or node.inputs[0] is None or not node.outputs:
        return False
    if node.op_type == "Dropout":
        if len(node.outputs) > 1 and n_uses(node.outputs[1]):
            return False
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = const_array(node.inputs[2])
            if mode is None or bool(mode):
                return False  # training_mode on (or unknown): it really drops
    return True


def remove_noops(graph: ir.Graph) -> int:
    """Bypass Identity and inference-mode Dropout nodes; returns how many went.

    A node between two interface tensors (graph input, initializer or another output and
    a graph output) stays: its output could only keep its name by renaming the other."""
    dead = []
    for node in list(graph):
        src = node.inputs[0] if _is_noop(node) else None
        if src is not None and bypass(graph, node.outputs[0], src):
            dead.append(node)
    return remove_nodes(graph, dead)


def remove_dead_nodes(graph: ir.Graph) -> int:
    """Drop nodes none of whose outputs reach a graph output (any node order)."""
    live: set[int] = set()
    stack = [p for o in graph.outputs if (p := o.producer()) is not None and p.graph is graph]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        for value in reads(node):
            producer = value.producer()
            if producer is not None and producer.graph is graph and id(producer) not in live:
                stack.append(producer)
    return remove_nodes(graph, [n for n in graph if id(n) not in live])


def _used(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def remove_unused(graph: ir.Graph, inputs: bool) -> tuple[int, int]:
    """Remove initializers nobody reads and, with `inputs`, graph inputs nobody reads."""
    unused = [name for name, v in graph.initializers.items() if not _used(v)]
    for name in unused:
        graph.initializers.pop(name)
    n_inputs = 0
    if inputs:
        keep = [v for v in graph.inputs if _used(v)]
        n_inputs = len(graph.inputs) - len(keep)
        if n_inputs:
            graph.inputs.clear()
            graph.inputs.extend(keep)
    return len(unused), n_inputs


def detach_initializers(model: ir.Model) -> int:
    """Stop listing initializers as graph inputs (IR < 4 exporters did), so they fold.

    An initializer listed as an input can be overridden at run time, so no pass may treat
    it as a constant; no runtime graphkit targets overrides weights, so we fix the weights
    and raise the IR version to 4, the first that allows it.
    """
    g = model.graph
    keep = [v for v in g.inputs if not v.is_initializer()]
    n = len(g.inputs) - len(keep)
    if n:
        g.inputs.clear()
        g.inputs.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return n


def _is_sorted(graph: ir.Graph) -> bool:
    """Whether every value (subgraph captures included) is written before it is read."""
    placed: set[int] = set()
    for node in graph:
        for value in reads(node):
            producer = value.producer()
            if producer is not None and producer.graph is graph and id(producer) not in placed:
                return False
        placed.add(id(node))
    return True


def toposort(graph: ir.Graph) -> bool:
    """Order the nodes so every value is written before it is read; True if order changed.

    A graph with a cycle stays as it is, for the checker to report."""
    if _is_sorted(graph):
        return False
    try:
        graph.sort()
    except ValueError:
        return False
    return True


def _unique_node_names(graph: ir.Graph) -> int:
    """Give every node a distinct, non-empty name (backends and reports key on it)."""
    seen: set[str] = set()
    changed = 0
    for node in graph:
        first = (node.outputs[0].name or "") if node.outputs else ""
        name = hint = node.name or f"{node.op_type}_{first}"
        i = 1
        while name in seen:
            name = f"{hint}_{i}"
            i += 1
        seen.add(name)
        if name != node.name:
            node.name = name
            changed += 1
    return changed


@register("cleanup")
def cleanup(
    model: ir.Model,
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
    n_noop = remove_noops(g) if remove_identity else 0
    n_dead = remove_dead_nodes(g)
    n_inits, n_inputs = remove_unused(g, remove_unused_inputs)
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


# Ops whose outputs differ between two calls with the same inputs.
_RANDOM = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}


def _attrs_key(node: ir.Node) -> bytes:
    return b"|".join(
        ir.serde.serialize_attribute(a).SerializeToString(deterministic=True)
        for a in sorted(node.attributes.values(), key=lambda a: a.name)
    )


def _merge_constants(graph: ir.Graph) -> int:
    """Make readers of an initializer equal to an earlier one read that one; returns how
    many went. Only tensors sharing type and shape with another one are hashed."""
    candidates = [
        v
        for v in graph.initializers.values()
        if not v.is_graph_input() and not v.is_graph_output() and v.const_value is not None
    ]
    counts: dict[tuple, int] = {}
    for v in candidates:
        k = (v.const_value.dtype, tuple(v.const_value.shape))  # type: ignore[union-attr]
        counts[k] = counts.get(k, 0) + 1
    first: dict[tuple, ir.Value] = {}
    dead: list[str] = []
    for v in candidates:
        tensor = v.const_value
        assert tensor is not None
        k = (tensor.dtype, tuple(tensor.shape))
        if counts[k] < 2:
            continue
        key = (*k, tensor_digest(tensor))
        if key in first:
            v.replace_all_uses_with(first[key])
            dead.append(v.name)  # type: ignore[arg-type]
        else:
            first[key] = v
    for name in dead:
        graph.initializers.pop(name)
    return len(dead)


def _mergeable(node: ir.Node) -> bool:
    return node.op_type not in _RANDOM and not node_subgraphs(node)


def _merge_nodes(graph: ir.Graph) -> int:
    """Make readers of a node equal to an earlier one (same op, attributes and inputs) read
    that one; in node order, so merged inputs make later nodes equal. Returns how many went."""
    seen: dict[tuple, ir.Node] = {}
    dead = []
    for node in graph:
        if not _mergeable(node):
            continue
        key = (
            node.domain,
            node.op_type,
            tuple(None if v is None else id(v) for v in node.inputs),
            len(node.outputs),
            _attrs_key(node),
        )
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        if any(o.is_graph_output() for o in node.outputs):
            continue
        pairs = list(zip(node.outputs, first.outputs))
        if any(a.name and not b.name for a, b in pairs):
            continue  # the first one does not write that output
        for a, b in pairs:
            a.replace_all_uses_with(b)
        dead.append(node)
    return remove_nodes(graph, dead)


@register("dedupe")
def dedupe(model: ir.Model) -> PassResult:
    """Merge identical constants, then identical nodes reading the same inputs.

    Our own pass (common-subexpression elimination, as onnxsim does): two initializers with
    the same type, shape and bytes become one; two nodes with the same op, attributes and
    inputs become one (repeated until stable). Nodes with side effects or randomness and
    nodes holding subgraphs are never merged.
    """
    g = model.graph
    n_constants = _merge_constants(g)
    n_nodes = _merge_nodes(g)
    notes = []
    if n_constants:
        notes.append(f"merged {plural(n_constants, 'duplicate constant')}")
    if n_nodes:
        notes.append(f"merged {plural(n_nodes, 'duplicate node')}")
    return PassResult(model, bool(notes), notes)
