"""Attention written for backends of at most 4 dimensions (ncnn, pnnx)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphkit.irgraph import (
    LazyShapes,
    Names,
    add_initializer,
    bypass,
    const_array,
    name_of,
    only_consumer,
    remove_nodes,
)
from graphkit.passes.base import PassResult, register

QKV_PERM = [2, 0, 3, 1, 4]


def _squeezed_axes(squeeze: ir.Node) -> list[int] | None:
    """A Squeeze's axes: the attribute (opset < 13) or the constant input."""
    axes = squeeze.attributes.get_ints("axes", None)
    if axes is None and len(squeeze.inputs) > 1:
        got = const_array(squeeze.inputs[1])
        axes = None if got is None else [int(a) for a in got.reshape(-1)]
    return None if axes is None else list(axes)


def _pieces(transpose: ir.Node, parts: int) -> list[tuple[ir.Value, list[ir.Node]]] | None:
    """(value, nodes that make it) of slice 0, 1, ... `parts` - 1 that the Transpose's
    readers take along axis 0: Split + Squeeze(0), or Gather(axis 0, scalar index). None
    unless every slice is there once and none is a graph output."""
    readers = {id(u.node): u.node for u in transpose.outputs[0].uses()}
    found: dict[int, tuple[ir.Value, list[ir.Node]]] = {}
    for node in readers.values():
        slices: dict[int, tuple[ir.Value, list[ir.Node]]] = {}
        if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
            index = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if index is None or index.ndim != 0:
                return None
            slices[int(index) % parts] = (node.outputs[0], [node])
        elif node.op_type == "Split" and node.attributes.get_int("axis", 0) == 0:
            if len(node.outputs) != parts:
                return None
            for i, piece in enumerate(node.outputs):
                squeeze = only_consumer(piece)
                if squeeze is None or squeeze.op_type != "Squeeze":
                    return None
                if _squeezed_axes(squeeze) != [0]:
                    return None
                slices[i] = (squeeze.outputs[0], [node, squeeze])
        else:
            return None
        if found.keys() & slices.keys():  # a slice taken twice
            return None
        found.update(slices)
    if sorted(found) != list(range(parts)):
        return None
    if any(value.is_graph_output() for value, _ in found.values()):
        return None
    return [found[i] for i in range(parts)]


def _split_one(
    graph: ir.Graph, names: Names, reshape: ir.Node, opset: int, shapes: LazyShapes
) -> str | None:
    """Rewrite one Reshape(x, [b, n, k, h, d]) -> Transpose(2, 0, 3, 1, 4) -> k slices."""
    shape = const_array(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if shape is None or shape.shape != (5,) or min(shape[2:]) <= 0:
        return None
    if reshape.attributes.get_int("allowzero", 0):
        return None
    transpose = only_consumer(reshape.outputs[0])
    if transpose is None or transpose.op_type != "Transpose":
        return None
    if list(transpose.attributes.get_ints("perm", [])) != QKV_PERM:
        return None
    if transpose.outputs[0].is_graph_output():
        return None
    b, n, parts, heads, dim = (int(v) for v in shape)
    pieces = _pieces(transpose, parts)
    x = reshape.inputs[0]
    # the reshape must split x's last axis only, into (k, h, d): x is [b, n, k*h*d]
    x_shape = shapes.get(x) if pieces is not None else None
    if x is None or x_shape is None or len(x_shape) != 3 or x_shape[2] != parts * heads * dim:
        return None
    assert pieces is not None
    width = heads * dim
    split_inputs: list[ir.Value | None] = [x]
    split_attrs = [ir.AttrInt64("axis", -1)]
    if opset >= 13:
        sizes = np.full(parts, width, np.int64)
        split_inputs.append(add_initializer(graph, sizes, names.fresh("qkv_sizes")))
    else:
        split_attrs.append(ir.AttrInt64s("split", [width] * parts))
    split = ir.Node("", "Split", split_inputs, attributes=split_attrs, num_outputs=parts)
    new_shape = add_initializer(
        graph, np.array([b, n, heads, dim], np.int64), names.fresh("qkv_head_shape")
    )
    made, heads_4d = [split], []
    for part, (value, _) in zip(split.outputs, pieces):
        part.name = names.fresh(f"{reshape.name or 'qkv'}_part")
        shaped = ir.Node("", "Reshape", [part, new_shape], num_outputs=1)
        perm = ir.Node(
            "", "Transpose", [shaped.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])]
        )
        shaped.outputs[0].name = names.fresh(f"{name_of(value)}_heads")
        perm.outputs[0].name = names.fresh(f"{name_of(value)}_4d")
        made += [shaped, perm]
        heads_4d.append(perm.outputs[0])
    graph.insert_after(reshape, made)
    for (value, _), new in zip(pieces, heads_4d):
        bypass(graph, value, new)  # never a graph output (_pieces): always possible
    old = [reshape, transpose] + [n for _, nodes in pieces for n in nodes]
    remove_nodes(graph, reversed(list({id(n): n for n in old}.values())))
    return reshape.name or name_of(reshape.outputs[0])


@register("split-qkv")
def split_qkv(model: ir.Model) -> PassResult:
    """Split a fused q/k/v projection's 5-D head reshape into three 4-D ones.

    Our own pass. ViT exports (timm, mmpretrain, ViTPose) compute q, k and v as
    Reshape(qkv, [B, N, 3, heads, dim]) -> Transpose(2, 0, 3, 1, 4) -> three slices of axis
    0 (Split + Squeeze, or Gather 0/1/2). ncnn holds at most 4 dimensions, so pnnx leaves
    that reshape as `Tensor.reshape` and the model does not convert. The same values come
    from Split(qkv, 3 x heads*dim, last axis), then per part Reshape([B, N, heads, dim])
    and Transpose(0, 2, 1, 3). Needs the reshape's shape constant with positive heads and
    dim, and an input known (shape inference) to be [B, N, 3 * heads * dim].
    """
    graph, names = model.graph, Names(model.graph)
    opset = model.opset_imports.get("", 13)
    reshapes = [n for n in graph if n.op_type == "Reshape" and n.domain == ""]
    shapes = LazyShapes(model)  # inferred only once a reshape matches the pattern
    done = []
    for node in reshapes:
        if (what := _split_one(graph, names, node, opset, shapes)) is not None:
            done.append(what)
    notes = [f"split the q/k/v heads of {len(done)} attention layer(s) into 4-D tensors"]
    return PassResult(model, bool(done), notes if done else [])
