"""Attention written for backends of at most 4 dimensions (ncnn, pnnx)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphkit.irgraph import (
    Names,
    Shape,
    add_initializer,
    bypass,
    const_array,
    name_of,
    remove_nodes,
    value_shapes,
)
from graphkit.passes.base import PassResult, register

QKV_PERM = [2, 0, 3, 1, 4]


def _pieces(transpose: ir.Node, parts: int) -> list[tuple[int, ir.Value, list[ir.Node]]] | None:
    """(index, value, nodes that make it) of each of the `parts` slices the Transpose's
    readers take along axis 0: Split + Squeeze(0), or Gather(axis 0, scalar index)."""
    readers = {id(u.node): u.node for u in transpose.outputs[0].uses()}
    out: list[tuple[int, ir.Value, list[ir.Node]]] = []
    for node in readers.values():
        if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
            index = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if index is None or index.ndim != 0:
                return None
            out.append((int(index) % parts, node.outputs[0], [node]))
        elif node.op_type == "Split" and node.attributes.get_int("axis", 0) == 0:
            if len(node.outputs) != parts:
                return None
            for i, piece in enumerate(node.outputs):
                squeeze = [u.node for u in piece.uses()]
                if len(squeeze) != 1 or squeeze[0].op_type != "Squeeze" or piece.is_graph_output():
                    return None
                axes = squeeze[0].attributes.get_ints("axes", None)
                if axes is None and len(squeeze[0].inputs) > 1:
                    got = const_array(squeeze[0].inputs[1])
                    axes = None if got is None else [int(a) for a in got.reshape(-1)]
                if list(axes or []) != [0]:
                    return None
                out.append((i, squeeze[0].outputs[0], [node, squeeze[0]]))
        else:
            return None
    return out if sorted(i for i, _, _ in out) == list(range(parts)) else None


def _split_one(
    graph: ir.Graph, names: Names, reshape: ir.Node, opset: int, shapes: dict[str, Shape]
) -> str | None:
    """Rewrite one Reshape(x, [b, n, k, h, d]) -> Transpose(2, 0, 3, 1, 4) -> k slices."""
    shape = const_array(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if shape is None or shape.shape != (5,) or min(shape[2:]) <= 0:
        return None
    if reshape.attributes.get_int("allowzero", 0):
        return None
    # the reshape must split x's last axis only, into (k, h, d): x is [b, n, k*h*d]
    x_shape = shapes.get(name_of(reshape.inputs[0])) if reshape.inputs[0] is not None else None
    if x_shape is None or len(x_shape) != 3 or x_shape[2] != int(np.prod(shape[2:])):
        return None
    readers = [u.node for u in reshape.outputs[0].uses()]
    if len(readers) != 1 or readers[0].op_type != "Transpose":
        return None
    transpose = readers[0]
    if list(transpose.attributes.get_ints("perm", [])) != QKV_PERM:
        return None
    if transpose.outputs[0].is_graph_output():
        return None
    b, n, parts, heads, dim = (int(v) for v in shape)
    pieces = _pieces(transpose, parts)
    if pieces is None or reshape.outputs[0].is_graph_output():
        return None
    x = reshape.inputs[0]
    assert x is not None
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
    made = [split]
    for i, out in enumerate(split.outputs):
        out.name = names.fresh(f"{reshape.name or 'qkv'}_part{i}")
    for i, value, _ in sorted(pieces, key=lambda p: p[0]):
        heads_4d = ir.Node("", "Reshape", [split.outputs[i], new_shape], num_outputs=1)
        perm = ir.Node(
            "", "Transpose", [heads_4d.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])]
        )
        heads_4d.outputs[0].name = names.fresh(f"{name_of(value)}_heads")
        perm.outputs[0].name = names.fresh(f"{name_of(value)}_4d")
        made += [heads_4d, perm]
    graph.insert_after(reshape, made)
    outs = iter(made[2::2])
    for i, value, _ in sorted(pieces, key=lambda p: p[0]):
        if not bypass(graph, value, next(outs).outputs[0]):
            return None
    old = [reshape, transpose] + [n for _, _, nodes in pieces for n in nodes]
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
    shapes = value_shapes(model) if reshapes else {}
    done = []
    for node in reshapes:
        if (what := _split_one(graph, names, node, opset, shapes)) is not None:
            done.append(what)
    notes = [f"split the q/k/v heads of {len(done)} attention layer(s) into 4-D tensors"]
    return PassResult(model, bool(done), notes if done else [])
