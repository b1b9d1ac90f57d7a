"""Fusions: fold BatchNormalization, Pad and per-channel affine ops into the layer before
or after them; MatMul+Add to Gemm; cancel or merge consecutive Transposes.

All are graphkit's own, written on numpy over the onnx_ir graph: they must be exact about
layouts that libraries have got wrong (ConvTranspose weights are [C_in, C_out/group, k...],
so a BatchNorm after a grouped ConvTranspose scales axis 1 per group, not axis 0) and must
refuse the cases that are not equivalent (non-zero Pad values, MaxPool padding,
AveragePool with count_include_pad=0, ceil_mode, non-per-channel broadcasts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from graphkit.irgraph import (
    LazyShapes,
    Names,
    add_initializer,
    bypass,
    const_array,
    n_uses,
    name_of,
    only_consumer,
    plural,
    remove_nodes,
    set_const_input,
)
from graphkit.passes.base import PassResult, register

Shape = list[int | None]


# --- shared helpers ----------------------------------------------------------------------------


def _op(node: ir.Node | None, *ops: str) -> ir.Node | None:
    """node if it is one of the standard-domain ops, else None."""
    return node if node is not None and node.op_type in ops and node.domain == "" else None


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _producer(value: ir.Value | None) -> ir.Node | None:
    return None if value is None else value.producer()


def _sole_reader(value: ir.Value) -> ir.Node | None:
    """The one node of value's own graph reading it (not a graph output), else None."""
    user = only_consumer(value)
    producer = value.producer()
    return (
        user if user is not None and producer is not None and user.graph is producer.graph else None
    )


def _fp(arr: np.ndarray | None) -> np.ndarray | None:
    """arr if it is a floating-point constant, else None."""
    return arr if arr is not None and arr.dtype.kind == "f" else None


def _const_fp(value: ir.Value | None) -> np.ndarray | None:
    return _fp(const_array(value))


def _label(node: ir.Node) -> str:
    """How notes name a node: its name, else its first output's."""
    return node.name or name_of(node.outputs[0])


# --- BatchNormalization into Conv / ConvTranspose / Gemm --------------------------------------


def _bn_consts(bn: ir.Node) -> list[np.ndarray] | None:
    """[scale, B, mean, var] of a BatchNormalization if all four are float constants."""
    vals = [_const_fp(v) for v in bn.inputs[1:5]]
    consts = [v for v in vals if v is not None]
    return consts if len(consts) == len(vals) else None


def _bn_params(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of an inference-mode BatchNormalization with constant parameters."""
    if len(bn.inputs) < 5 or bn.attributes.get_int("training_mode", 0) != 0:
        return None
    if any(n_uses(o) for o in bn.outputs[1:]):
        return None
    vals = _bn_consts(bn)
    if vals is None:
        return None
    gamma, beta, mean, var = (v.astype(np.float64).reshape(-1) for v in vals)
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _conv_bias(node: ir.Node, channels: int) -> np.ndarray | None:
    bias = _input(node, 2)
    if bias is not None:
        b = _const_fp(bias)
        return None if b is None else b.astype(np.float64).reshape(-1)
    return np.zeros(channels)


def _set_bias(graph: ir.Graph, names: Names, node: ir.Node, bias: np.ndarray, dtype) -> None:
    """Input 2 (the bias) of node becomes `bias`, added when the node had none."""
    if _input(node, 2) is not None:
        set_const_input(graph, node, 2, bias.astype(dtype), names)
        return
    value = add_initializer(graph, bias.astype(dtype), names.fresh(_label(node) + "_bias"))
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, value)


def _scale_weight(node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """Multiply output channel o of a Conv/ConvTranspose weight by scale[o]."""
    if node.op_type == "Conv":
        if w.shape[0] != scale.size:
            return None
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    # ConvTranspose: W is [C_in, C_out/group, k...]; output channel = g*(C_out/group) + j
    group = node.attributes.get_int("group", 1)
    c_in, per_group = w.shape[0], w.shape[1]
    if per_group * group != scale.size or c_in % group:
        return None
    s = scale.reshape(group, 1, per_group)  # [g, 1, C_out/g]
    wg = w.reshape((group, c_in // group, per_group) + w.shape[2:])
    wg = wg * s.reshape(s.shape + (1,) * (w.ndim - 2))
    return wg.reshape(w.shape)


def _fold_bn(graph: ir.Graph, names: Names, bn: ir.Node) -> str | None:
    """Fold one BatchNormalization into its producer; what was fused, or None."""
    prod = _op(_producer(bn.inputs[0]), "Conv", "ConvTranspose", "Gemm")
    if prod is None or _sole_reader(prod.outputs[0]) is not bn:
        return None
    params = _bn_params(bn)
    w = _const_fp(_input(prod, 1))
    if params is None or w is None:
        return None
    scale, shift = params
    if prod.op_type == "Gemm":
        if not _fold_into_gemm(graph, names, prod, w, scale, shift):
            return None
    else:
        bias = _conv_bias(prod, scale.size)
        new_w = _scale_weight(prod, w.astype(np.float64), scale)
        if bias is None or new_w is None or bias.size != scale.size:
            return None
        set_const_input(graph, prod, 1, new_w.astype(w.dtype), names)
        _set_bias(graph, names, prod, bias * scale + shift, w.dtype)
    label = _label(bn)
    if not bypass(graph, bn.outputs[0], prod.outputs[0]):
        return None  # cannot happen for a valid graph; nothing was rewired
    remove_nodes(graph, [bn])
    return f"{label} into {prod.op_type} {_label(prod)}"


def _fold_into_gemm(
    graph: ir.Graph,
    names: Names,
    gemm: ir.Node,
    w: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
) -> bool:
    """y = alpha*A@B + beta*C, then BN over axis 1 -> B scaled per column, new C, alpha 1."""
    if w.ndim != 2:
        return False
    trans_b = gemm.attributes.get_int("transB", 0)
    n = w.shape[0] if trans_b else w.shape[1]
    if n != scale.size:
        return False
    alpha = gemm.attributes.get_float("alpha", 1.0)
    beta = gemm.attributes.get_float("beta", 1.0)
    c = np.zeros(n)
    c_in = _input(gemm, 2)
    if c_in is not None:
        cv = _const_fp(c_in)
        if cv is None or cv.ndim > 2 or (cv.ndim == 2 and cv.shape[0] != 1):
            return False
        c = np.broadcast_to(cv.astype(np.float64).reshape(-1), (n,)) * beta
    wd = w.astype(np.float64) * alpha
    wd = wd * (scale[:, None] if trans_b else scale[None, :])
    set_const_input(graph, gemm, 1, wd.astype(w.dtype), names)
    _set_bias(graph, names, gemm, c * scale + shift, w.dtype)
    gemm.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return True


@register("fuse-bn")
def fuse_bn(model: ir.Model) -> PassResult:
    """Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm before it.

    Our own pass (onnxoptimizer only handles Conv): for ConvTranspose the weight layout is
    [C_in, C_out/group, k...] and the scale is applied per group along axis 1. Needs
    constant weights and BN parameters and a producer read only by the BN.
    """
    graph, names = model.graph, Names(model.graph)
    fused = []
    for bn in list(graph):
        if _op(bn, "BatchNormalization") and (done := _fold_bn(graph, names, bn)):
            fused.append(done)
    return PassResult(model, bool(fused), _summarize("fused BatchNormalization", fused))


# --- Pad into Conv / AveragePool ------------------------------------------------------------


def _pad_amounts(pad: ir.Node, rank: int | None, op_version: int) -> list[int] | None:
    """Pads [x1_begin, x2_begin, ..., x1_end, ...] of a constant-zero Pad, or None."""
    if pad.attributes.get_string("mode", "constant") != "constant":
        return None
    if op_version < 11:
        pads = list(pad.attributes.get_ints("pads", []))
        value = pad.attributes.get_float("value", 0.0)
    else:
        p = const_array(_input(pad, 1))
        if p is None:
            return None
        pads = [int(v) for v in p.reshape(-1)]
        value = 0.0
        if _input(pad, 2) is not None:
            v = const_array(_input(pad, 2))
            if v is None or v.size != 1:
                return None
            value = float(v.reshape(-1)[0])
        if _input(pad, 3) is not None:
            axes = const_array(_input(pad, 3))
            if axes is None or rank is None:
                return None
            full = [0] * (2 * rank)
            k = len(axes.reshape(-1))
            for j, a in enumerate(axes.reshape(-1)):
                a = int(a) + rank if a < 0 else int(a)
                full[a], full[a + rank] = pads[j], pads[j + k]
            pads = full
    if value != 0.0 or not pads or any(v < 0 for v in pads):
        return None
    return pads


def _merged_pads(user: ir.Node, pads: list[int]) -> list[int] | None:
    """The layer's pads with a Pad's spatial amounts added, or None when not equivalent."""
    rank = len(pads) // 2
    if any(pads[i] or pads[i + rank] for i in (0, 1)):
        return None  # padding batch or channels
    spatial = rank - 2
    begin, end = pads[2:rank], pads[rank + 2 :]
    if user.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    old = list(user.attributes.get_ints("pads", [0] * (2 * spatial)))
    if len(old) != 2 * spatial:
        return None
    pool = user.op_type == "AveragePool"
    if pool:
        if user.attributes.get_int("ceil_mode", 0):
            return None
        if any(old) and not user.attributes.get_int("count_include_pad", 0):
            return None  # existing padding is excluded from the mean, the Pad's is not
    new = [old[i] + begin[i] for i in range(spatial)] + [
        old[spatial + i] + end[i] for i in range(spatial)
    ]
    if pool:
        kernel = list(user.attributes.get_ints("kernel_shape", []))
        if len(kernel) != spatial or any(
            new[i] >= kernel[i] or new[spatial + i] >= kernel[i] for i in range(spatial)
        ):
            return None  # pools require pads smaller than the window
    return new


def _fold_pad(graph: ir.Graph, pad: ir.Node, op_version: int, shapes: LazyShapes) -> str | None:
    """Fold one Pad into the Conv or AveragePool reading it; what was fused, or None."""
    user = _op(_sole_reader(pad.outputs[0]), "Conv", "AveragePool")
    if user is None or user.inputs[0] is not pad.outputs[0]:
        return None
    in_shape = shapes.get(pad.inputs[0])
    pads = _pad_amounts(pad, len(in_shape) if in_shape else None, op_version)
    new = None if pads is None else _merged_pads(user, pads)
    if new is None:
        return None
    if user.op_type == "AveragePool":
        user.attributes["count_include_pad"] = ir.AttrInt64("count_include_pad", 1)
    user.attributes["pads"] = ir.AttrInt64s("pads", new)
    user.attributes.pop("auto_pad", None)
    user.replace_input_with(0, pad.inputs[0])
    remove_nodes(graph, [pad])
    return f"{_label(pad)} into {user.op_type} {_label(user)}"


def _opset(model: ir.Model) -> int:
    imports = model.opset_imports
    return imports.get("", imports.get("ai.onnx", 0))


@register("fuse-pad")
def fuse_pad(model: ir.Model) -> PassResult:
    """Fold a constant zero Pad into the pads of the Conv or AveragePool that reads it.

    Our own pass. Only constant mode with value 0 on spatial axes, non-negative pads, and
    a layer without auto_pad. MaxPool is never fused (it pads with -inf, not 0). For
    AveragePool the padded zeros must count in the mean, so the pool gets
    count_include_pad=1 and is refused if it already had padding excluded from the mean
    or uses ceil_mode (windows over the padding would be dropped differently), and pools
    only take pads smaller than their window.
    """
    graph, shapes, version = model.graph, LazyShapes(model), _opset(model)
    fused = []
    for pad in list(graph):
        if _op(pad, "Pad") and (done := _fold_pad(graph, pad, version, shapes)):
            fused.append(done)
    return PassResult(model, bool(fused), _summarize("fused Pad", fused))


# --- constant Mul/Add into Conv (and BatchNormalization) ---------------------------------------


def _per_channel(c: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """c as a [channels] vector if it broadcasts along axis 1 only, else None."""
    if c.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,)).copy()


def _layer_and_const(op: ir.Node) -> tuple[int, ir.Node, np.ndarray] | None:
    """(k, producer, c): the first input k of a binary op written by a Conv or
    BatchNormalization whose other input c is a float constant, or None."""
    for k in (0, 1):
        prod = _op(_producer(op.inputs[k]), "Conv", "BatchNormalization")
        c = _const_fp(op.inputs[1 - k])
        if prod is not None and c is not None:
            return k, prod, c
    return None


def _affine(op_type: str, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(mul, add) such that `x op vec` == x * mul + add, or None (division by zero)."""
    ones, zeros = np.ones(vec.size), np.zeros(vec.size)
    if op_type == "Mul":
        return vec, zeros
    if op_type == "Div":
        return None if np.any(vec == 0) else (1.0 / vec, zeros)
    return ones, (vec if op_type == "Add" else -vec)


def _fold_affine(graph: ir.Graph, names: Names, op: ir.Node, shapes: LazyShapes) -> str | None:
    """Fold one constant Mul/Add/Sub/Div into the Conv or BN before it; what, or None."""
    if len(op.inputs) != 2 or None in op.inputs:
        return None
    found = _layer_and_const(op)
    if found is None:
        return None
    k, prod, c = found
    if op.op_type in ("Sub", "Div") and k != 0:
        return None  # c - x and c / x are not affine in x
    if _sole_reader(prod.outputs[0]) is not op:
        return None
    out_shape = shapes.get(prod.outputs[0])
    w: np.ndarray | None = None  # the Conv's weight
    if prod.op_type == "Conv":
        w = _const_fp(_input(prod, 1))
        if w is None:
            return None
        channels, rank = w.shape[0], w.ndim
    else:
        params = _bn_params(prod)
        if params is None or not out_shape:
            return None
        channels, rank = params[0].size, len(out_shape)
    if out_shape is not None and len(out_shape) != rank:
        return None
    vec = _per_channel(c, rank, channels)
    if vec is None or (w is not None and c.dtype != w.dtype):
        return None
    affine = _affine(op.op_type, vec)
    if affine is None:
        return None
    mul, add = affine
    if w is not None:  # Conv
        bias = _conv_bias(prod, channels)
        if bias is None:
            return None
        new_w = w.astype(np.float64) * mul.reshape((-1,) + (1,) * (w.ndim - 1))
        set_const_input(graph, prod, 1, new_w.astype(w.dtype), names)
        _set_bias(graph, names, prod, bias * mul + add, w.dtype)
    else:
        vals = _bn_consts(prod)
        assert vals is not None  # _bn_params read them above
        dtype = vals[0].dtype
        gamma, beta = (v.astype(np.float64).reshape(-1) for v in vals[:2])
        set_const_input(graph, prod, 1, (gamma * mul).astype(dtype), names)
        set_const_input(graph, prod, 2, (beta * mul + add).astype(dtype), names)
    label = _label(op)
    if not bypass(graph, op.outputs[0], prod.outputs[0]):
        return None
    remove_nodes(graph, [op])
    return f"{op.op_type} {label} into {prod.op_type}"


@register("fuse-conv-affine")
def fuse_conv_affine(model: ir.Model) -> PassResult:
    """Fold a constant per-channel Mul/Add/Sub/Div after a Conv or BatchNorm into its weights.

    Works after a Conv and after an inference BatchNormalization (its scale and shift).

    Our own pass. Only constants that broadcast along the channel axis (shapes like [C,1,1],
    [1,C,1,1], [1] or scalars) are fused; anything that varies along other axes is left
    alone, as are c - x and c / x. Repeats until chains (Conv -> Mul -> Add) are gone.
    """
    graph, names, shapes = model.graph, Names(model.graph), LazyShapes(model)
    fused: list[str] = []
    while True:
        step = [
            done
            for op in list(graph)
            if op.graph is graph
            and _op(op, "Mul", "Add", "Sub", "Div")
            and (done := _fold_affine(graph, names, op, shapes))
        ]
        fused += step
        if not step:
            break
    return PassResult(model, bool(fused), _summarize("fused constant", fused))


# --- MatMul + Add -> Gemm ------------------------------------------------------------------------


def _is_2d(shape: Shape | None) -> bool:
    return shape is not None and len(shape) == 2


def _gemm_bias(mm: ir.Node, shapes: LazyShapes) -> tuple[ir.Node, ir.Value] | None:
    """(Add, C): the Add reading a 2-D MatMul alone whose other input is a Gemm bias."""
    a_shape, b_shape = shapes.get(mm.inputs[0]), shapes.get(mm.inputs[1])
    if not _is_2d(a_shape) or not _is_2d(b_shape):
        return None
    assert a_shape is not None and b_shape is not None
    y = mm.outputs[0]
    add = _op(_sole_reader(y), "Add")
    if add is None or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    if other is None or other is y:
        return None
    c_shape = shapes.get(other)
    n, m = b_shape[1], a_shape[0]
    if c_shape is None or n is None or len(c_shape) > 2:
        return None
    if c_shape and c_shape[-1] not in (1, n):
        return None
    if len(c_shape) == 2 and (c_shape[0] is None or c_shape[0] not in (1, m)):
        return None
    return add, other


def _to_gemm(graph: ir.Graph, mm: ir.Node, add: ir.Node, c: ir.Value) -> bool:
    """Make the MatMul a Gemm with bias c writing what the Add wrote; the Add goes."""
    out, y = add.outputs[0], mm.outputs[0]
    name, out_type, out_shape = out.name, out.type, out.shape
    if not bypass(graph, out, y):
        return False
    remove_nodes(graph, [add])
    # the Gemm's output is the Add's tensor: its name, and its type and shape when known
    y.name = name
    y.type = out_type if out_type is not None else y.type
    y.shape = out_shape if out_shape is not None else y.shape
    mm.op_type = "Gemm"
    mm.resize_inputs(3)
    mm.replace_input_with(2, c)
    if not mm.name:
        mm.name = add.name
    return True


@register("matmul-to-gemm")
def matmul_to_gemm(model: ir.Model) -> PassResult:
    """Turn a 2-D MatMul followed by an Add into one Gemm.

    Our own pass. Both MatMul inputs must be known to be 2-D (batched MatMul is not a
    Gemm), the MatMul must feed only the Add, and the added tensor must broadcast one way
    to the [M, N] result (Gemm's C cannot grow the output).
    """
    graph, shapes = model.graph, LazyShapes(model)
    fused = []
    for mm in list(graph):
        if not _op(mm, "MatMul") or len(mm.inputs) != 2:
            continue
        found = _gemm_bias(mm, shapes)
        if found is not None and _to_gemm(graph, mm, *found):
            fused.append(_label(mm))
    return PassResult(model, bool(fused), _summarize("fused MatMul+Add into Gemm", fused))


# --- Transpose pairs ---------------------------------------------------------------------------


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    p: Sequence[int] | None = node.attributes.get_ints("perm")
    if p is not None:
        return list(p)
    return list(range(rank))[::-1] if rank is not None else None


def _transpose_pair(t2: ir.Node, shapes: LazyShapes) -> tuple[ir.Node, list[int]] | None:
    """(t1, q): the Transpose t2 reads and the one permutation both make."""
    t1 = _op(_producer(t2.inputs[0]), "Transpose")
    if t1 is None:
        return None
    shape = shapes.get(t1.inputs[0])
    rank = len(shape) if shape is not None else None
    p1, p2 = _perm(t1, rank), _perm(t2, rank)
    if p1 is None or p2 is None or len(p1) != len(p2):
        return None
    return t1, [p1[i] for i in p2]


def _cancel_or_merge(graph: ir.Graph, t2: ir.Node, shapes: LazyShapes) -> str | None:
    """ "cancelled" or "merged" when t2 and the Transpose before it were simplified."""
    pair = _transpose_pair(t2, shapes)
    if pair is None:
        return None
    t1, q = pair
    source = t1.inputs[0]
    assert source is not None
    if q == list(range(len(q))):
        if not bypass(graph, t2.outputs[0], source):
            return None
        remove_nodes(graph, [t2])
        if n_uses(t1.outputs[0]) == 0:
            remove_nodes(graph, [t1])
        return "cancelled"
    if n_uses(t1.outputs[0]) != 1:
        return None  # merging would duplicate work, not remove it
    t2.replace_input_with(0, source)
    t2.attributes["perm"] = ir.AttrInt64s("perm", q)
    remove_nodes(graph, [t1])
    return "merged"


@register("cancel-transposes")
def cancel_transposes(model: ir.Model) -> PassResult:
    """Remove Transpose pairs that undo each other; merge other consecutive pairs into one.

    Our own pass. Transpose(p1) then Transpose(p2) equals Transpose(q) with
    q[i] = p1[p2[i]]; when q is the identity both go (the first stays if something else
    reads it), otherwise the second is replaced by one Transpose(q) reading the first's
    input.
    """
    graph, shapes = model.graph, LazyShapes(model)
    done: dict[str, list[str]] = {"cancelled": [], "merged": []}
    changed = True
    while changed:
        changed = False
        for t2 in list(graph):
            if not _op(t2, "Transpose"):
                continue
            label = _label(t2)
            what = _cancel_or_merge(graph, t2, shapes)
            if what is not None:
                done[what].append(label)
                changed = True
                break
    notes = []
    if done["cancelled"]:
        notes.append(f"cancelled {plural(len(done['cancelled']), 'inverse Transpose pair')}")
    if done["merged"]:
        merged = plural(len(done["merged"]), "Transpose pair")
        notes.append(f"merged {merged} into single Transposes")
    return PassResult(model, bool(notes), notes)


def _summarize(what: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")
    return [f"{what}: {shown}"]
