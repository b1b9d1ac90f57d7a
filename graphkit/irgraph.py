"""What every graph walk and edit shares on onnx_ir: conversion, reads, constants, names,
bypassing, removal, shape inference without the weights.

Passes, quantization, the backends and the evaluators read and edit `onnx_ir.Model`s (the
ONNX project's IR: every Value knows its producer and its uses, subgraph captures
included, and external weights stay on disk until read). The few decisions onnx_ir
leaves to its user live here once: which values count as constants (an initializer that
is not an overridable graph input, or a Constant node), how a graph output keeps its name
and type when the node writing it goes, fresh unique names, and scalars that stay 0-d.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from graphkit.weights import file_chunks


def to_ir(model: onnx.ModelProto) -> ir.Model:
    """The IR of a protobuf model (weights shared, not copied; lazy headers stay lazy)."""
    return ir.from_proto(model)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The protobuf of an IR model (what onnxruntime, the checker and saving take)."""
    return ir.to_proto(model)


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graph and every subgraph below it (If/Loop/Scan bodies)."""
    yield graph
    yield from graph.subgraphs()


def all_values(graph: ir.Graph) -> Iterator[ir.Value]:
    """Every value defined anywhere in the graph or its subgraphs."""
    for g in all_graphs(graph):
        yield from g.inputs
        yield from g.initializers.values()
        for node in g:
            yield from node.outputs


def node_subgraphs(node: ir.Node) -> list[ir.Graph]:
    """Graphs held in a node's attributes (If/Loop/Scan bodies)."""
    graphs: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            graphs.append(attr.as_graph())
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs.extend(attr.as_graphs())
    return graphs


def reads(node: ir.Node) -> list[ir.Value]:
    """Every value a node reads: its inputs and what its subgraphs take from outside."""
    values = [v for v in node.inputs if v is not None]
    subs = node_subgraphs(node)
    if subs:
        inner = {id(g) for s in subs for g in all_graphs(s)}
        for sub in subs:
            for g in all_graphs(sub):
                for v in [*(i for n in g for i in n.inputs), *g.outputs]:
                    if v is not None and id(v.graph) not in inner:
                        values.append(v)
    return list({id(v): v for v in values}.values())


def ancestors(targets: Iterable[ir.Value], stop: Iterable[ir.Value] = ()) -> list[ir.Node]:
    """The nodes `targets` depend on (in no particular order), not walking past `stop`."""
    stopped = {id(v) for v in stop}
    seen: dict[int, ir.Node] = {}
    todo = [v for v in targets if id(v) not in stopped]
    while todo:
        node = todo.pop().producer()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        todo.extend(v for v in reads(node) if id(v) not in stopped)
    return list(seen.values())


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The fixed value of a tensor, or None: an initializer that is not also a graph input
    (those can be overridden at run time) or the output of a Constant node."""
    if value is None or value.is_graph_input():
        return None
    if value.is_initializer():
        tensor = value.const_value
        return None if tensor is None else tensor.numpy()
    node = value.producer()
    if node is None or node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The named values of the graph itself (inputs, initializers, node outputs)."""
    values: dict[str, ir.Value] = {}
    for value in [*graph.inputs, *graph.initializers.values()]:
        if value.name:
            values.setdefault(value.name, value)
    for node in graph:
        for value in node.outputs:
            if value.name:
                values.setdefault(value.name, value)
    return values


def real_inputs(graph: ir.Graph) -> list[ir.Value]:
    """Graph inputs that are not initializers (old exporters list both)."""
    return [v for v in graph.inputs if not v.is_initializer()]


def copy_node(
    node: ir.Node, inputs: Sequence[ir.Value | None], name: str, outputs: Sequence[str]
) -> ir.Node:
    """A copy of `node` (attributes shared, subgraphs cloned) reading `inputs`, with one
    output per name in `outputs`; in no graph yet, its outputs without type or shape."""
    attrs: list[ir.Attr] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            graph = attr.as_graph().clone(allow_outer_scope_values=True)
            attr = ir.Attr(attr.name, attr.type, graph, doc_string=attr.doc_string)
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = [g.clone(allow_outer_scope_values=True) for g in attr.as_graphs()]
            attr = ir.Attr(attr.name, attr.type, graphs, doc_string=attr.doc_string)
        attrs.append(attr)
    copy = ir.Node(
        node.domain,
        node.op_type,
        inputs,
        attrs,
        overload=node.overload,
        num_outputs=len(outputs),
        version=node.version,
        name=name,
        doc_string=node.doc_string,
        metadata_props=dict(node.metadata_props) or None,
    )
    for value, out in zip(copy.outputs, outputs):
        value.name = out
    return copy


def name_of(value: ir.Value) -> str:
    """A value's name ("" for the unnamed, which a parsed model never has)."""
    return value.name or ""


def n_uses(value: ir.Value) -> int:
    """Readers of a value, counting being a graph output as one reader."""
    return len(value.uses()) + value.is_graph_output()


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading a value that is not a graph output, else None."""
    if value.is_graph_output():
        return None
    users = {id(u.node): u.node for u in value.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


class Names:
    """Fresh tensor names for one model: every name in use anywhere is taken."""

    def __init__(self, graph: ir.Graph | None = None):
        self.taken: set[str] = set()
        if graph is not None:
            self.taken = {v.name for v in all_values(graph) if v.name}

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.taken:
            name = f"{hint}_{i}"
            i += 1
        self.taken.add(name)
        return name


def as_tensor(array: np.ndarray, name: str) -> ir.TensorProtocol:
    """An IR tensor holding `array`: scalars stay 0-d, strings go through onnx (onnx_ir
    reads them as fixed-width bytes), and no slow type detection (ir.tensor is 10x slower)."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        return ir.serde.TensorProtoTensor(numpy_helper.from_array(array.astype(object), name))
    return ir.Tensor(np.require(array, requirements="C"), name=name)


def add_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """A new initializer holding `array` under `name` (the caller made it unique)."""
    tensor = as_tensor(array, name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))
    value.const_value = tensor
    graph.register_initializer(value)
    return value


def set_const_input(
    graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names: Names
) -> None:
    """Give input `index` of `node` the value `array` without changing any other reader:
    overwrite the initializer when this node is its only reader, else add a new one."""
    old = node.inputs[index] if index < len(node.inputs) else None
    if (
        old is not None
        and old.is_initializer()
        and not old.is_graph_input()
        and not old.is_graph_output()
        and len(old.uses()) == 1
    ):
        tensor = as_tensor(array, name_of(old))
        old.const_value = tensor
        old.shape = ir.Shape(array.shape)
        old.type = ir.TensorType(tensor.dtype)
        return
    hint = (old.name if old is not None and old.name else node.name or node.op_type) + "_fused"
    value = add_initializer(graph, array, names.fresh(hint))
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def set_initializer(value: ir.Value, array: np.ndarray | ir.TensorProtocol) -> None:
    """Give initializer `value` new contents, type and shape (every reader sees them)."""
    tensor = as_tensor(array, name_of(value)) if isinstance(array, np.ndarray) else array
    value.const_value = tensor
    value.type = ir.TensorType(tensor.dtype)
    value.shape = ir.Shape(tensor.shape.numpy())


def keep_only_outputs(graph: ir.Graph, outputs: list[ir.Value]) -> int:
    """Make `outputs` the graph's outputs and delete every node they do not need, with the
    weights only those read (onnxruntime runs every node of a session, wanted or not).
    Returns how many nodes went."""
    graph.outputs[:] = outputs
    needed = {id(n) for n in ancestors(outputs)}
    doomed = [n for n in graph if id(n) not in needed]
    remove_nodes(graph, doomed)
    drop_unused_initializers(graph)
    return len(doomed)


def bypass(graph: ir.Graph, old: ir.Value, new: ir.Value) -> bool:
    """Make every reader of `old` read `new` instead, so `old`'s producer can go.

    When `old` is a graph output its name must survive: the graph output slot then takes
    `new`, renamed to `old`'s name and given the type and shape the output declared
    (possible only when `new` is written by a node of this graph and is itself neither a
    graph input nor output). Otherwise `new` only learns the type or shape it lacked.
    Returns False, changing nothing, when it is not possible."""
    if old is new:
        return True
    declared = (old.type, old.shape)
    if old.is_graph_output():
        producer = new.producer()
        if (
            producer is None
            or producer.graph is not graph
            or new.is_graph_output()
            or new.is_graph_input()
            or new.is_initializer()
        ):
            return False
        name = old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = None
        new.name = name
        if declared[0] is not None:
            new.type, new.shape = declared
        return True
    old.replace_all_uses_with(new)
    new.type = new.type or declared[0]
    new.shape = new.shape or declared[1]
    return True


def captures(node: ir.Node) -> list[tuple[ir.Node, int]]:
    """(inner node, input index) of every outer value the node's subgraphs read."""
    subs = [g for top in node_subgraphs(node) for g in all_graphs(top)]
    inner = {id(g) for g in subs}
    return [
        (n, i)
        for g in subs
        for n in g
        for i, v in enumerate(n.inputs)
        if v is not None and id(v.graph) not in inner
    ]


def remove_nodes(graph: ir.Graph, nodes: Iterable[ir.Node]) -> int:
    """Delete nodes whose outputs nobody reads any more, detaching their inputs and what
    their subgraphs read from outside (onnx_ir's safe removal detaches only the former)."""
    dead = list({id(n): n for n in nodes}.values())
    for node in dead:
        for inner, i in captures(node):
            inner.replace_input_with(i, None)
    if dead:
        graph.remove(dead, safe=True)
    return len(dead)


def drop_unused_initializers(graph: ir.Graph) -> int:
    """Remove initializers that nothing reads, with the graph inputs that only listed them
    (old IR versions list initializers as inputs too); real graph inputs stay."""
    unused = [v for v in graph.initializers.values() if not v.uses() and not v.is_graph_output()]
    if any(v.is_graph_input() for v in unused):
        dead = {id(v) for v in unused}
        graph.inputs[:] = [v for v in graph.inputs if id(v) not in dead]
    for v in unused:
        graph.initializers.pop(name_of(v))
    return len(unused)


def skeleton(model: ir.Model, keep_elements: int = 64) -> onnx.ModelProto:
    """The model as a protobuf without its big weights, for onnx shape inference and the
    checker: initializers of more than `keep_elements` values (or left on disk) become typed
    graph inputs, small ones (shape vectors, axes) keep their values because inference
    reads them. Nothing is read from disk and the model is not touched."""
    g = model.graph
    small: list[ir.Value] = []
    typed: list[onnx.ValueInfoProto] = []
    for name, v in g.initializers.items():
        t = v.const_value
        if t is not None and t.size <= keep_elements and not isinstance(t, ir.ExternalTensor):
            small.append(v)
        elif not v.is_graph_input():
            dtype = int(t.dtype) if t is not None else int(v.dtype or 0)
            dims = list(t.shape.numpy()) if t is not None else None
            typed.append(onnx.helper.make_tensor_value_info(name, dtype, dims))
    view = ir.GraphView(g.inputs, g.outputs, nodes=g, initializers=small, name=g.name)
    proto = onnx.ModelProto(ir_version=max(model.ir_version, 4))
    proto.opset_import.extend(
        onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()
    )
    proto.functions.extend(
        ir.serde.serialize_function(f, create_value_info=model.ir_version >= 10)
        for f in model.functions.values()
    )
    # onnx_ir 1.1's GraphView does not type-check against its own GraphViewProtocol
    ir.serde.serialize_graph_into(proto.graph, view, model_ir_version=model.ir_version)  # type: ignore[arg-type]
    proto.graph.input.extend(typed)
    return proto


Shape = list[int | None]


def value_shapes(model: ir.Model) -> dict[str, Shape]:
    """Shape of every main-graph tensor onnx shape inference can tell (None: unknown dim),
    from the skeleton; nothing is written back into the model."""
    light = skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:  # noqa: BLE001 - any failure means "cannot infer": keep what is declared
        inferred = light
    shapes: dict[str, Shape] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            ]
    for name, v in model.graph.initializers.items():
        if v.const_value is not None:
            shapes[name] = [int(d) for d in v.const_value.shape.numpy()]
    return shapes


class LazyShapes:
    """Tensor shapes by name, from `value_shapes` on first use: most passes find nothing
    to rewrite and never ask, so they never pay for shape inference."""

    def __init__(self, model: ir.Model):
        self.model = model
        self._shapes: dict[str, Shape] | None = None

    def get(self, value: ir.Value | None) -> Shape | None:
        if value is None:
            return None
        if self._shapes is None:
            self._shapes = value_shapes(self.model)
        return self._shapes.get(name_of(value))


def tensor_digest(tensor: ir.TensorProtocol) -> str:
    """sha1 of a tensor's bytes, streamed from disk for external tensors (big weights are
    compared without being loaded)."""
    h = hashlib.sha1()
    h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
    if isinstance(tensor, ir.ExternalTensor):
        offset, length = tensor.offset or 0, tensor.length
        if length is None:
            length = tensor.nbytes
        for piece in file_chunks(tensor.path, offset, length, tensor.name or ""):
            h.update(piece)
        return h.hexdigest()
    h.update(tensor.tobytes())
    return h.hexdigest()


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
