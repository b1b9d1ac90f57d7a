"""Graph queries and edits on ONNX protos, below every other layer that reads a graph.

Passes edit the ModelProto they are given in place (the pipeline hands them a copy); the
runtime cuts graphs into parts and prunes them; quantization inserts nodes. These
helpers keep the bookkeeping in one place: who produces and who consumes a tensor (with
the tensors subgraphs capture), which nodes a tensor depends on, which tensors are
constants, and how to bypass a node without breaking graph output names.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Container, Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from graphkit import weights


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """Graphs held in a node's attributes (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def has_subgraph(node: onnx.NodeProto) -> bool:
    for a in node.attribute:
        if a.type in _GRAPH_ATTRS:
            return True
    return False


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (used but not defined inside it)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(node.output)
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used.update(outer_names(sub))
    used.update(o.name for o in graph.output)
    return used - defined


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs take from outside."""
    names = [n for n in node.input if n]
    if not node.attribute or not has_subgraph(node):
        return names
    for sub in subgraphs(node):
        names.extend(sorted(outer_names(sub)))
    return names


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def del_attr(node: onnx.NodeProto, name: str) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            return


def opset(model: onnx.ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 0


class GraphIndex:
    """Producers, consumers and constants of one graph, rebuilt on demand after edits."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        if getattr(self, "_doomed", None):
            self.flush()
        g = self.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in dict.fromkeys(node_reads(node)):
                self.consumers[name].append(node)
        self.inits = {i.name: i for i in g.initializer}
        self.input_names = {i.name for i in g.input}
        self.output_names = {o.name for o in g.output}
        self._taken: set[str] | None = None
        self._doomed: set[int] = set()
        self._doomed_keep: list[onnx.NodeProto] = []

    # --- constants -------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        """A tensor whose value is fixed: a non-overridable initializer or a Constant output."""
        if name in self.inits:
            return name not in self.input_names
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant" and not node.domain

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits and name not in self.input_names:
            return weights.tensor_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and not node.domain:
            return constant_node_value(node)
        return None

    def n_uses(self, name: str) -> int:
        """Readers of a tensor, counting being a graph output as one reader."""
        return len(self.consumers.get(name, [])) + (name in self.output_names)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.output_names:
            return users[0]
        return None

    # --- editing ---------------------------------------------------------------------
    def add_initializer(self, array: np.ndarray, hint: str) -> str:
        name = unique_name(hint, self.taken())
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self.consumers.setdefault(name, [])
        self.inits[name] = self.graph.initializer[-1]
        return name

    def set_initializer(self, name: str, array: np.ndarray) -> None:
        """Overwrite a constant initializer, or shadow it with a new one if it is shared."""
        new = numpy_helper.from_array(array, name)
        if name in self.inits:
            self.inits[name].CopyFrom(new)  # the element itself, still in the graph
            return
        self.graph.initializer.append(new)
        self.inits[name] = self.graph.initializer[-1]

    def private_const(self, node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        """Give `node` input `index` the value `array` without touching other readers."""
        old = node.input[index]
        if (
            old in self.inits
            and len(self.consumers.get(old, [])) == 1
            and old not in self.output_names
        ):
            self.set_initializer(old, array)
        else:
            name = self.add_initializer(array, (old or node.name or node.op_type) + "_fused")
            while len(node.input) <= index:
                node.input.append("")
            self.set_input(node, index, name)

    def taken(self) -> set[str]:
        """Every tensor name in use (kept up to date by add_initializer)."""
        if self._taken is None:
            self._taken = (
                set(self.producer) | set(self.inits) | self.input_names | self.output_names
            )
        return self._taken

    def set_input(self, node: onnx.NodeProto, i: int, name: str) -> None:
        """Point input `i` of `node` at tensor `name`, keeping the consumer map right."""
        old = node.input[i]
        node.input[i] = name
        if old and old not in node.input:
            self.consumers[old] = [n for n in self.consumers.get(old, []) if n is not node]
        users = self.consumers[name]
        if name and not any(n is node for n in users):
            users.append(node)

    def bypass(self, old: str, new: str) -> bool:
        """Make every reader of tensor `old` read `new` instead, so `old`'s producer can go.

        When `old` is a graph output its name must survive: then `new`'s producer is made to
        write `old` directly (possible only if `new` comes from a node and is not itself a
        graph output). Returns False, changing nothing, when it is not possible.
        """
        if old == new:
            return True
        g = self.graph
        if old in self.output_names:
            prod = self.producer.get(new)
            if prod is None or new in self.output_names or new in self.input_names:
                return False
            if any(
                old in outer_names(s) or new in outer_names(s) for n in g.node for s in subgraphs(n)
            ):
                return False
            # rename `new` to `old` everywhere; the node that wrote `old` is about to go
            for node in g.node:
                for i, name in enumerate(node.output):
                    if name == old:
                        node.output[i] = ""
            for node in g.node:
                for i, name in enumerate(node.input):
                    if name == new:
                        node.input[i] = old
                for i, name in enumerate(node.output):
                    if name == new:
                        node.output[i] = old
            for vi in g.value_info:
                if vi.name == new:
                    vi.name = old + "__gk_stale"
            self.refresh()
            return True
        if any(old in outer_names(s) for n in self.consumers.get(old, []) for s in subgraphs(n)):
            return False
        for node in list(self.consumers.get(old, [])):
            for i, name in enumerate(node.input):
                if name == old:
                    self.set_input(node, i, new)
        return True

    def remove_nodes(self, dead: Iterable[onnx.NodeProto], defer: bool = False) -> int:
        """Delete nodes in place (other node objects stay valid and in the graph).

        With defer the maps forget them at once but the graph keeps them until flush(),
        so a pass that removes many nodes one by one pays for one sweep, not one each.
        """
        dead = list(dead)
        dead_ids = {id(n) for n in dead}
        if not dead_ids:
            return 0
        for node in dead:
            for o in node.output:
                if self.producer.get(o) is node:
                    del self.producer[o]
            for name in set(node_reads(node)):
                self.consumers[name] = [n for n in self.consumers.get(name, []) if n is not node]
        self._doomed.update(dead_ids)
        self._doomed_keep.extend(dead)  # keep the objects alive so their ids stay unique
        if not defer:
            self.flush()
        return len(dead_ids)

    def is_removed(self, node: onnx.NodeProto) -> bool:
        return id(node) in self._doomed

    def flush(self) -> None:
        """Physically delete the nodes removed with defer=True."""
        if not self._doomed:
            return
        doomed = [i for i, n in enumerate(self.graph.node) if id(n) in self._doomed]
        for i in reversed(doomed):
            del self.graph.node[i]
        self._doomed.clear()
        self._doomed_keep.clear()


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, whichever attribute holds it."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def unique_name(hint: str, taken: set[str]) -> str:
    name, i = hint, 1
    while name in taken:
        name = f"{hint}_{i}"
        i += 1
    taken.add(name)
    return name


def keep_only(field, keep) -> int:
    """Delete the elements of a repeated proto field for which keep(elem) is false, in
    place (no copies of the kept ones: they may be large weights). Returns how many went."""
    doomed = [i for i, elem in enumerate(field) if not keep(elem)]
    for i in reversed(doomed):
        del field[i]
    return len(doomed)


def drop_unused_weights(graph: onnx.GraphProto, initializers: Container[str]) -> None:
    """Remove initializers no node reads, and graph inputs that only listed one of them.

    `initializers` are the names that were initializers before the edit (old IR models list
    them as graph inputs too); real graph inputs are kept even when unused."""
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    keep_only(graph.initializer, lambda i: i.name in used)
    keep_only(graph.input, lambda vi: vi.name in used or vi.name not in initializers)


def drop_stale_value_info(graph: onnx.GraphProto) -> None:
    """Forget intermediate shapes so shape inference recomputes them from scratch."""
    produced = {o for n in graph.node for o in n.output}
    keep_only(
        graph.value_info, lambda vi: vi.name in produced and not vi.name.endswith("__gk_stale")
    )


def skeleton(model: onnx.ModelProto, keep_elements: int = 64) -> onnx.ModelProto:
    """A copy without the big weights, for fast checking and shape inference.

    Initializers larger than `keep_elements` become typed graph inputs (their shapes are
    all inference needs); small ones (shape vectors, axes) keep their values because shape
    inference reads them.
    """
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    for init in g.initializer:
        n = math.prod(init.dims)
        if n <= keep_elements and init.data_location != onnx.TensorProto.EXTERNAL:
            lg.initializer.append(init)
            continue
        if init.name not in declared:
            lg.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light


def value_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shape of every tensor shape inference can tell (None for unknown dims)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # noqa: BLE001 - any failure means "cannot infer/evaluate"
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            ]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


class LazyShapes:
    """value_shapes computed on first use (most passes find nothing to do and never ask)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self._shapes: dict[str, list[int | None]] | None = None

    def get(self, name: str, default=None):
        if self._shapes is None:
            self._shapes = value_shapes(self.model)
        return self._shapes.get(name, default)


def toposort(graph: onnx.GraphProto) -> bool:
    """Order nodes so every tensor is written before it is read; True if order changed."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    seen = set(available)
    for n in nodes:  # fast path: already in order
        if not all(x in seen for x in node_reads(n)):
            break
        seen.update(n.output)
    else:
        return False
    pending = {
        id(n): [x for x in dict.fromkeys(node_reads(n)) if x not in available] for n in nodes
    }
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for x in pending[id(n)]:
            readers[x].append(n)
    ready = [n for n in nodes if not pending[id(n)]]
    order: list[onnx.NodeProto] = []
    index = {id(n): i for i, n in enumerate(nodes)}
    import heapq

    heap = [(index[id(n)], id(n), n) for n in ready]
    heapq.heapify(heap)
    waiting = {id(n): len(pending[id(n)]) for n in nodes}
    seen_out: set[str] = set()
    while heap:
        _, _, n = heapq.heappop(heap)
        order.append(n)
        for out in n.output:
            if not out or out in seen_out:
                continue
            seen_out.add(out)
            for r in readers.get(out, []):
                waiting[id(r)] -= 1
                if waiting[id(r)] == 0:
                    heapq.heappush(heap, (index[id(r)], id(r), r))
    if len(order) != len(nodes):
        return False  # a cycle or a missing tensor: leave the graph for the checker to report
    if all(a is b for a, b in zip(order, nodes)):
        return False
    copies = []
    for n in order:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors used inside a node's subgraphs (If/Loop/Scan bodies)."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for sub in g.node:
                local.update(sub.output)
            for sub in g.node:
                refs.update(n for n in list(sub.input) + list(subgraph_refs(sub)) if n)
            refs -= local
    return refs


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads, including those its subgraphs capture."""
    names = [n for n in node.input if n]
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        names += sorted(subgraph_refs(node))
    return names


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the node that produces it."""
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes that read it."""
    result: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node_inputs(node):
            result.setdefault(name, []).append(i)
    return result


def ancestors(
    graph: onnx.GraphProto, targets: Iterable[str], stop: set[str] | None = None
) -> set[int]:
    """Indices of the nodes that `targets` depend on, not walking past `stop` tensors."""
    prod = producers(graph)
    stop = stop or set()
    seen: set[int] = set()
    todo = [t for t in targets if t not in stop]
    while todo:
        name = todo.pop()
        idx = prod.get(name)
        if idx is None or idx in seen:
            continue
        seen.add(idx)
        todo.extend(n for n in node_inputs(graph.node[idx]) if n not in stop)
    return seen
