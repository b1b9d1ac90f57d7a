"""eliminate-nops: remove nodes that return their input unchanged, merge reshape chains."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.irgraph import (
    Names,
    add_initializer,
    bypass,
    const_array,
    n_uses,
    plural,
    remove_nodes,
    skeleton,
)
from graphkit.passes.base import PassResult, register

_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}

# (element type, shape with None for unknown dimensions), each None when unknown
_Type = tuple[ir.DataType | None, tuple[int | None, ...] | None]


def _proto_type(vi: onnx.ValueInfoProto) -> _Type:
    t = vi.type.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return (ir.DataType(t.elem_type) if t.elem_type else None), shape


def _types(model: ir.Model) -> dict[ir.Value, _Type]:
    """(element type, shape) of every main-graph value shape inference can tell (by value,
    not name: a bypass may rename a value)."""
    g = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model)).graph
    except Exception:  # noqa: BLE001 - without inference nothing is provably a no-op
        return {}
    by_name = {vi.name: vi for vi in (*inferred.input, *inferred.value_info, *inferred.output)}
    types: dict[ir.Value, _Type] = {}
    for v in (*g.inputs, *(o for node in g for o in node.outputs)):
        vi = by_name.get(v.name or "")
        if vi is not None:
            types[v] = _proto_type(vi)
    for v in g.initializers.values():
        if v.const_value is not None:
            types[v] = (v.const_value.dtype, tuple(v.const_value.shape.numpy()))
    return types


def _static(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


class _Shapes:
    """Type and shape of values as inference saw them at the start of the pass."""

    def __init__(self, model: ir.Model):
        self.types = _types(model)

    def get(self, value: ir.Value | None) -> _Type | None:
        return None if value is None else self.types.get(value)

    def same_type(self, a: ir.Value | None, b: ir.Value | None) -> bool:
        ta, tb = self.get(a), self.get(b)
        return ta is not None and tb is not None and ta[0] is not None and ta[0] == tb[0]

    def same_static_shape(self, a: ir.Value | None, b: ir.Value | None) -> bool:
        ta, tb = self.get(a), self.get(b)
        return self.same_type(a, b) and _static(ta[1]) and ta[1] == tb[1]  # type: ignore[index]


def _nop_source(node: ir.Node, shapes: _Shapes) -> ir.Value | None:
    """The input a node's first output always equals, or None."""
    return node.inputs[0] if _is_nop(node, shapes) else _neutral_source(node, shapes)


def _extra_outputs_unused(node: ir.Node) -> bool:
    return not any(n_uses(o) for o in node.outputs[1:])


def _is_nop(node: ir.Node, shapes: _Shapes) -> bool:
    """True if the node's first output always equals its first input."""
    op = node.op_type
    if not node.inputs or node.inputs[0] is None or not node.outputs or not node.outputs[0].name:
        return False
    if not _extra_outputs_unused(node):
        return False
    src, dst = node.inputs[0], node.outputs[0]
    if op == "Split":
        return len(node.outputs) == 1 and shapes.same_static_shape(src, dst)
    if op == "Concat":
        return len([i for i in node.inputs if i is not None]) == 1
    if op == "Transpose":
        perm = node.attributes.get_ints("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Cast":
        return shapes.same_type(src, dst)
    if op == "Pad":
        pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None:
            pads = np.array(node.attributes.get_ints("pads", [1]))
        return bool(np.all(pads == 0)) and shapes.same_type(src, dst)
    if op in _RESHAPES or op in ("Expand", "Tile"):
        return shapes.same_static_shape(src, dst)
    return False


def _neutral_source(node: ir.Node, shapes: _Shapes) -> ir.Value | None:
    """x for x+0, 0+x, x-0, x*1, 1*x, x/1 when nothing broadcasts."""
    op = node.op_type
    if op not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2 or not node.outputs:
        return None
    if not _extra_outputs_unused(node):
        return None
    neutral = 0.0 if op in ("Add", "Sub") else 1.0
    for x, c in ((0, 1), (1, 0)) if op in ("Add", "Mul") else ((0, 1),):
        if not shapes.same_static_shape(node.inputs[x], node.outputs[0]):
            continue  # checked first: it needs no weights read
        value = const_array(node.inputs[c])
        if value is not None and value.size and np.all(value == neutral):
            return node.inputs[x]
    return None


class _ChainMerger:
    """Reshape-like after reshape-like, with a static result: one Reshape from the start."""

    def __init__(self, graph: ir.Graph, shapes: _Shapes):
        self.graph, self.shapes = graph, shapes
        self.names: Names | None = None

    def merge(self, node: ir.Node) -> bool:
        if node.op_type not in _RESHAPES or node.domain or not node.inputs:
            return False
        first = node.inputs[0]
        prev = None if first is None else first.producer()
        if prev is None or prev.op_type not in _RESHAPES or prev.domain:
            return False
        if n_uses(prev.outputs[0]) != 1 or prev.inputs[0] is None:
            return False
        t_out = self.shapes.get(node.outputs[0])
        if t_out is None or not _static(t_out[1]):
            return False
        if self.names is None:
            self.names = Names(self.graph)
        name = self.names.fresh((node.outputs[0].name or "") + "_shape")
        shape = add_initializer(self.graph, np.array(t_out[1], dtype=np.int64), name)
        node.op_type = "Reshape"
        node.attributes.clear()
        node.resize_inputs(2)
        node.replace_input_with(0, prev.inputs[0])
        node.replace_input_with(1, shape)
        remove_nodes(self.graph, [prev])
        return True


@register("eliminate-nops")
def eliminate_nops(model: ir.Model) -> PassResult:
    """Remove nodes that provably return their input (and merge chains of reshapes).

    Our own pass, on shape inference: single-output Split and single-input Concat,
    identity Transpose, Cast to the same type, zero Pad, Reshape/Squeeze/Unsqueeze/
    Flatten/Expand/Tile whose output shape equals the input shape, and Add/Sub of 0 or
    Mul/Div by 1 that do not broadcast. A chain of Reshape-like nodes with a static result
    becomes one Reshape. Graph output names are kept.
    """
    g = model.graph
    shapes = _Shapes(model)
    removed: dict[str, int] = {}
    dead = []
    for node in list(g):
        src = None if node.domain else _nop_source(node, shapes)
        if src is not None and bypass(g, node.outputs[0], src):
            dead.append(node)
            removed[node.op_type] = removed.get(node.op_type, 0) + 1
    remove_nodes(g, dead)
    merger = _ChainMerger(g, shapes)
    merged = 0
    changed = True
    while changed:
        changed = False
        for node in list(g):
            if node.graph is g and merger.merge(node):
                merged += 1
                changed = True
    notes = []
    if removed:
        ops = ", ".join(f"{v} {k}" for k, v in sorted(removed.items()))
        notes.append(f"removed {plural(sum(removed.values()), 'no-op node')} ({ops})")
    if merged:
        notes.append(f"merged {plural(merged, 'reshape chain')}")
    return PassResult(model, bool(notes), notes)
