"""eliminate-nops: remove nodes that return their input unchanged, merge reshape chains."""

from __future__ import annotations

import numpy as np
import onnx

from graphkit.graph import GraphIndex, attr, plural, skeleton
from graphkit.passes.base import PassResult, register

_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}


def _types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int | None] | None]]:
    """(element type, shape) of every tensor shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # noqa: BLE001 - without inference nothing is provably a no-op
        return {}
    out: dict[str, tuple[int, list[int | None] | None]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[vi.name] = (t.elem_type, shape)
    for init in model.graph.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    return out


def _static(shape: list[int | None] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _nop_source(idx: GraphIndex, node: onnx.NodeProto, types: dict) -> str | None:
    """The input a node's first output always equals, or None."""
    return node.input[0] if _is_nop(idx, node, types) else _neutral_source(idx, node, types)


def _is_nop(idx: GraphIndex, node: onnx.NodeProto, types: dict) -> bool:
    """True if the node's first output always equals its first input."""
    op = node.op_type
    if not node.input or not node.input[0] or not node.output or not node.output[0]:
        return False
    if any(o and idx.n_uses(o) for o in node.output[1:]):
        return False
    src, dst = node.input[0], node.output[0]
    t_in, t_out = types.get(src), types.get(dst)
    same_type = t_in is not None and t_out is not None and t_in[0] == t_out[0] and t_in[0] != 0
    same_shape = same_type and _static(t_in[1]) and t_in[1] == t_out[1]  # type: ignore[index]
    if op == "Split":
        return len(node.output) == 1 and same_shape
    if op == "Concat":
        return len([i for i in node.input if i]) == 1
    if op == "Transpose":
        perm = attr(node, "perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Cast":
        return same_type
    if op in _RESHAPES or op in ("Expand", "Tile", "Slice", "Resize", "Pad"):
        if op == "Pad":
            pads = idx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if pads is None:
                pads = np.array(attr(node, "pads", [1]))
            return bool(np.all(pads == 0)) and same_type
        return same_shape and op in _RESHAPES | {"Expand", "Tile"}
    return False


def _neutral_source(idx: GraphIndex, node: onnx.NodeProto, types: dict) -> str | None:
    """x for x+0, 0+x, x-0, x*1, 1*x, x/1 when nothing broadcasts."""
    op = node.op_type
    if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2 and node.output:
        if any(o and idx.n_uses(o) for o in node.output[1:]):
            return None
        t_out = types.get(node.output[0])
        neutral = 0.0 if op in ("Add", "Sub") else 1.0
        for k in ((0, 1), (1, 0)) if op in ("Add", "Mul") else ((0, 1),):
            c = idx.const(node.input[k[1]])
            if c is not None and c.size and np.all(c == neutral):
                t_x = types.get(node.input[k[0]])
                same = t_x is not None and t_out is not None and t_x[0] == t_out[0]
                if same and _static(t_x[1]) and t_x[1] == t_out[1]:  # type: ignore[index]
                    return node.input[k[0]]
    return None


def _merge_reshape_chain(idx: GraphIndex, node: onnx.NodeProto, types: dict) -> bool:
    """Reshape-like after reshape-like, with a static result: one Reshape from the start."""
    if node.op_type not in _RESHAPES or node.domain:
        return False
    prev = idx.producer.get(node.input[0])
    if prev is None or prev.op_type not in _RESHAPES or prev.domain:
        return False
    if idx.n_uses(prev.output[0]) != 1:
        return False
    t_out = types.get(node.output[0])
    if t_out is None or not _static(t_out[1]):
        return False
    shape = np.array(t_out[1], dtype=np.int64)
    name = idx.add_initializer(shape, node.output[0] + "_shape")
    node.op_type = "Reshape"
    del node.attribute[:]
    del node.input[:]
    node.input.extend([prev.input[0], name])
    idx.refresh()
    idx.remove_nodes([prev])
    return True


@register("eliminate-nops")
def eliminate_nops(model: onnx.ModelProto) -> PassResult:
    """Remove nodes that provably return their input (and merge chains of reshapes).

    Our own pass, on shape inference: single-output Split and single-input Concat,
    identity Transpose, Cast to the same type, zero Pad, Reshape/Squeeze/Unsqueeze/
    Flatten/Expand/Tile whose output shape equals the input shape, and Add/Sub of 0 or
    Mul/Div by 1 that do not broadcast. A chain of Reshape-like nodes with a static result
    becomes one Reshape. Graph output names are kept.
    """
    idx = GraphIndex(model.graph)
    types = _types(model)
    removed: dict[str, int] = {}
    merged = 0
    dead = []
    for node in list(idx.graph.node):
        src = None if node.domain else _nop_source(idx, node, types)
        if src is None:
            continue
        dst = node.output[0]
        if dst in idx.output_names and (
            src in idx.input_names or src in idx.inits or src in idx.output_names
        ):
            continue
        if idx.bypass(dst, src):
            dead.append(node)
            removed[node.op_type] = removed.get(node.op_type, 0) + 1
    idx.remove_nodes(dead)
    changed = True
    while changed:
        changed = False
        for node in list(idx.graph.node):
            if _merge_reshape_chain(idx, node, types):
                merged += 1
                changed = True
                break
    notes = []
    if removed:
        ops = ", ".join(f"{v} {k}" for k, v in sorted(removed.items()))
        notes.append(f"removed {plural(sum(removed.values()), 'no-op node')} ({ops})")
    if merged:
        notes.append(f"merged {plural(merged, 'reshape chain')}")
    return PassResult(model, bool(notes), notes)
