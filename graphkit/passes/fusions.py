"""Fusions: fold BatchNormalization, Pad and per-channel affine ops into the layer before
or after them; MatMul+Add to Gemm; cancel or merge consecutive Transposes.

All are graphkit's own, written on numpy: they must be exact about layouts that libraries
have got wrong (ConvTranspose weights are [C_in, C_out/group, k...], so a BatchNorm
after a grouped ConvTranspose scales axis 1 per group, not axis 0) and must refuse the
cases that are not equivalent (non-zero Pad values, MaxPool padding, AveragePool with
count_include_pad=0, ceil_mode, non-per-channel broadcasts).
"""

from __future__ import annotations

import numpy as np
import onnx

from graphkit.graph import (
    GraphIndex,
    LazyShapes,
    attr,
    del_attr,
    opset,
    plural,
    set_attr,
)
from graphkit.passes.base import PassResult, register

Shapes = LazyShapes | dict[str, list[int | None]]  # tensor name -> shape, as value_shapes


def _read_only_by(idx: GraphIndex, tensor: str, node: onnx.NodeProto) -> bool:
    """node is the one reader of tensor (which is not a graph output)."""
    return idx.only_consumer(tensor) is node


def _fp(arr: np.ndarray | None) -> np.ndarray | None:
    """arr if it is a floating-point constant, else None."""
    return arr if arr is not None and arr.dtype.kind == "f" else None


# --- BatchNormalization into Conv / ConvTranspose / Gemm --------------------------------------


def _bn_consts(idx: GraphIndex, bn: onnx.NodeProto) -> list[np.ndarray] | None:
    """[scale, B, mean, var] of a BatchNormalization if all four are float constants."""
    vals = [_fp(idx.const(n)) for n in bn.input[1:5]]
    consts = [v for v in vals if v is not None]
    return consts if len(consts) == len(vals) else None


def _bn_params(idx: GraphIndex, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of an inference-mode BatchNormalization with constant parameters."""
    if len(bn.input) < 5 or attr(bn, "training_mode", 0):
        return None
    if any(o and idx.n_uses(o) for o in bn.output[1:]):
        return None
    vals = _bn_consts(idx, bn)
    if vals is None:
        return None
    gamma, beta, mean, var = (v.astype(np.float64).reshape(-1) for v in vals)
    eps = attr(bn, "epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _conv_bias(idx: GraphIndex, node: onnx.NodeProto, channels: int) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2]:
        b = _fp(idx.const(node.input[2]))
        return None if b is None else b.astype(np.float64).reshape(-1)
    return np.zeros(channels)


def _set_bias(idx: GraphIndex, node: onnx.NodeProto, bias: np.ndarray, dtype) -> None:
    if len(node.input) > 2 and node.input[2]:
        idx.private_const(node, 2, bias.astype(dtype))
    else:
        name = idx.add_initializer(bias.astype(dtype), (node.name or node.output[0]) + "_bias")
        while len(node.input) < 3:
            node.input.append("")
        idx.set_input(node, 2, name)


def _scale_weight(node: onnx.NodeProto, w: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """Multiply output channel o of a Conv/ConvTranspose weight by scale[o]."""
    if node.op_type == "Conv":
        if w.shape[0] != scale.size:
            return None
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    # ConvTranspose: W is [C_in, C_out/group, k...]; output channel = g*(C_out/group) + j
    group = attr(node, "group", 1)
    c_in, per_group = w.shape[0], w.shape[1]
    if per_group * group != scale.size or c_in % group:
        return None
    s = scale.reshape(group, 1, per_group)  # [g, 1, C_out/g]
    wg = w.reshape((group, c_in // group, per_group) + w.shape[2:])
    wg = wg * s.reshape(s.shape + (1,) * (w.ndim - 2))
    return wg.reshape(w.shape)


def fuse_bn_once(idx: GraphIndex) -> list[str]:
    fused = []
    for bn in list(idx.graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain or idx.is_removed(bn):
            continue
        prod = idx.producer.get(bn.input[0])
        if prod is None or prod.op_type not in ("Conv", "ConvTranspose", "Gemm") or prod.domain:
            continue
        if not _read_only_by(idx, prod.output[0], bn):
            continue
        params = _bn_params(idx, bn)
        w = _fp(idx.const(prod.input[1])) if len(prod.input) > 1 else None
        if params is None or w is None:
            continue
        scale, shift = params
        if prod.op_type == "Gemm":
            if not _fold_into_gemm(idx, prod, w, scale, shift):
                continue
        else:
            bias = _conv_bias(idx, prod, scale.size)
            new_w = _scale_weight(prod, w.astype(np.float64), scale)
            if bias is None or new_w is None or bias.size != scale.size:
                continue
            idx.private_const(prod, 1, new_w.astype(w.dtype))
            _set_bias(idx, prod, bias * scale + shift, w.dtype)
        if not idx.bypass(bn.output[0], prod.output[0]):
            continue  # cannot happen for a valid graph; nothing was rewired
        idx.remove_nodes([bn], defer=True)
        fused.append(f"{bn.name or bn.output[0]} into {prod.op_type} {prod.name or prod.output[0]}")
    idx.flush()
    return fused


def _fold_into_gemm(
    idx: GraphIndex, gemm: onnx.NodeProto, w: np.ndarray, scale: np.ndarray, shift: np.ndarray
) -> bool:
    """y = alpha*A@B + beta*C, then BN over axis 1 -> B scaled per column, new C, alpha 1."""
    if w.ndim != 2:
        return False
    trans_b = attr(gemm, "transB", 0)
    n = w.shape[0] if trans_b else w.shape[1]
    if n != scale.size:
        return False
    alpha, beta = attr(gemm, "alpha", 1.0), attr(gemm, "beta", 1.0)
    c = np.zeros(n)
    if len(gemm.input) > 2 and gemm.input[2]:
        cv = _fp(idx.const(gemm.input[2]))
        if cv is None or cv.ndim > 2 or (cv.ndim == 2 and cv.shape[0] != 1):
            return False
        c = np.broadcast_to(cv.astype(np.float64).reshape(-1), (n,)) * beta
    wd = w.astype(np.float64) * alpha
    wd = wd * (scale[:, None] if trans_b else scale[None, :])
    idx.private_const(gemm, 1, wd.astype(w.dtype))
    _set_bias(idx, gemm, c * scale + shift, w.dtype)
    set_attr(gemm, "alpha", 1.0)
    set_attr(gemm, "beta", 1.0)
    return True


@register("fuse-bn")
def fuse_bn(model: onnx.ModelProto) -> PassResult:
    """Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm before it.

    Our own pass (onnxoptimizer only handles Conv): for ConvTranspose the weight layout is
    [C_in, C_out/group, k...] and the scale is applied per group along axis 1. Needs
    constant weights and BN parameters and a producer read only by the BN.
    """
    idx = GraphIndex(model.graph)
    fused = fuse_bn_once(idx)
    return PassResult(model, bool(fused), _summarize("fused BatchNormalization", fused))


# --- Pad into Conv / AveragePool ------------------------------------------------------------


def _pad_amounts(
    idx: GraphIndex, pad: onnx.NodeProto, rank: int | None, op_version: int
) -> list[int] | None:
    """Pads [x1_begin, x2_begin, ..., x1_end, ...] of a constant-zero Pad, or None."""
    mode = attr(pad, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return None
    if op_version < 11:
        pads = list(attr(pad, "pads", []))
        value = attr(pad, "value", 0.0)
    else:
        p = idx.const(pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
        if p is None:
            return None
        pads = [int(v) for v in p.reshape(-1)]
        value = 0.0
        if len(pad.input) > 2 and pad.input[2]:
            v = idx.const(pad.input[2])
            if v is None or v.size != 1:
                return None
            value = float(v.reshape(-1)[0])
        if len(pad.input) > 3 and pad.input[3]:
            axes = idx.const(pad.input[3])
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


def fuse_pad_once(idx: GraphIndex, op_version: int, shapes: Shapes) -> list[str]:
    fused = []
    for pad in list(idx.graph.node):
        if pad.op_type != "Pad" or pad.domain:
            continue
        user = idx.only_consumer(pad.output[0])
        if (
            user is None
            or user.op_type not in ("Conv", "AveragePool")
            or user.input[0] != pad.output[0]
        ):
            continue
        in_shape = shapes.get(pad.input[0])
        pads = _pad_amounts(idx, pad, len(in_shape) if in_shape else None, op_version)
        if pads is None:
            continue
        rank = len(pads) // 2
        if any(pads[i] or pads[i + rank] for i in (0, 1)):
            continue  # padding batch or channels
        spatial = rank - 2
        begin, end = pads[2:rank], pads[rank + 2 :]
        auto = attr(user, "auto_pad", b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", ""):
            continue
        old = list(attr(user, "pads", [0] * (2 * spatial)))
        if len(old) != 2 * spatial:
            continue
        if user.op_type == "AveragePool":
            if attr(user, "ceil_mode", 0):
                continue
            if any(old) and not attr(user, "count_include_pad", 0):
                continue  # existing padding is excluded from the mean, the Pad's is not
        new = [old[i] + begin[i] for i in range(spatial)] + [
            old[spatial + i] + end[i] for i in range(spatial)
        ]
        if user.op_type == "AveragePool":
            kernel = list(attr(user, "kernel_shape", []))
            if len(kernel) != spatial or any(
                new[i] >= kernel[i] or new[spatial + i] >= kernel[i] for i in range(spatial)
            ):
                continue  # pools require pads smaller than the window
            set_attr(user, "count_include_pad", 1)
        set_attr(user, "pads", new)
        del_attr(user, "auto_pad")
        user.input[0] = pad.input[0]
        idx.refresh()
        idx.remove_nodes([pad])
        fused.append(
            f"{pad.name or pad.output[0]} into {user.op_type} {user.name or user.output[0]}"
        )
    return fused


@register("fuse-pad")
def fuse_pad(model: onnx.ModelProto) -> PassResult:
    """Fold a constant zero Pad into the pads of the Conv or AveragePool that reads it.

    Our own pass. Only constant mode with value 0 on spatial axes, non-negative pads, and
    a layer without auto_pad. MaxPool is never fused (it pads with -inf, not 0). For
    AveragePool the padded zeros must count in the mean, so the pool gets
    count_include_pad=1 and is refused if it already had padding excluded from the mean
    or uses ceil_mode (windows over the padding would be dropped differently), and pools
    only take pads smaller than their window.
    """
    idx = GraphIndex(model.graph)
    shapes = LazyShapes(model)
    fused = fuse_pad_once(idx, opset(model), shapes)
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


def _layer_and_const(
    idx: GraphIndex, op: onnx.NodeProto
) -> tuple[int, onnx.NodeProto, np.ndarray] | None:
    """(k, producer, c): the first input k of a binary op written by a Conv or
    BatchNormalization whose other input c is a float constant, or None."""
    for k in (0, 1):
        prod = idx.producer.get(op.input[k])
        c = _fp(idx.const(op.input[1 - k]))
        if (
            prod is not None
            and c is not None
            and prod.op_type in ("Conv", "BatchNormalization")
            and not prod.domain
        ):
            return k, prod, c
    return None


def fuse_affine_once(idx: GraphIndex, shapes: Shapes) -> list[str]:
    fused = []
    for op in list(idx.graph.node):
        if op.op_type not in ("Mul", "Add", "Sub", "Div") or op.domain or len(op.input) != 2:
            continue
        if idx.is_removed(op):
            continue
        found = _layer_and_const(idx, op)
        if found is None:
            continue
        k, prod, c = found
        if op.op_type in ("Sub", "Div") and k != 0:
            continue  # c - x and c / x are not affine in x
        if not _read_only_by(idx, prod.output[0], op):
            continue
        out_shape = shapes.get(prod.output[0])
        w: np.ndarray | None = None  # the Conv's weight
        if prod.op_type == "Conv":
            w = _fp(idx.const(prod.input[1]))
            if w is None:
                continue
            channels, rank = w.shape[0], w.ndim
        else:
            params = _bn_params(idx, prod)
            if params is None:
                continue
            channels = params[0].size
            if not out_shape:
                continue
            rank = len(out_shape)
        if out_shape is not None and len(out_shape) != rank:
            continue
        vec = _per_channel(c, rank, channels)
        if vec is None or (w is not None and c.dtype != w.dtype):
            continue
        mul, add = np.ones(channels), np.zeros(channels)
        if op.op_type == "Mul":
            mul = vec
        elif op.op_type == "Div":
            if np.any(vec == 0):
                continue
            mul = 1.0 / vec
        elif op.op_type == "Add":
            add = vec
        else:
            add = -vec
        if w is not None:  # Conv
            bias = _conv_bias(idx, prod, channels)
            if bias is None:
                continue
            new_w = w.astype(np.float64) * mul.reshape((-1,) + (1,) * (w.ndim - 1))
            idx.private_const(prod, 1, new_w.astype(w.dtype))
            _set_bias(idx, prod, bias * mul + add, w.dtype)
        else:
            vals = _bn_consts(idx, prod)
            assert vals is not None  # _bn_params read them above
            dtype = vals[0].dtype
            gamma, beta = (v.astype(np.float64).reshape(-1) for v in vals[:2])
            idx.private_const(prod, 1, (gamma * mul).astype(dtype))
            idx.private_const(prod, 2, (beta * mul + add).astype(dtype))
        if not idx.bypass(op.output[0], prod.output[0]):
            continue
        idx.remove_nodes([op], defer=True)
        fused.append(f"{op.op_type} {op.name or op.output[0]} into {prod.op_type}")
    idx.flush()
    return fused


@register("fuse-conv-affine")
def fuse_conv_affine(model: onnx.ModelProto) -> PassResult:
    """Fold a constant per-channel Mul/Add/Sub/Div after a Conv or BatchNorm into its weights.

    Works after a Conv and after an inference BatchNormalization (its scale and shift).

    Our own pass. Only constants that broadcast along the channel axis (shapes like [C,1,1],
    [1,C,1,1], [1] or scalars) are fused; anything that varies along other axes is left
    alone, as are c - x and c / x. Repeats until chains (Conv -> Mul -> Add) are gone.
    """
    idx = GraphIndex(model.graph)
    shapes = LazyShapes(model)
    fused: list[str] = []
    while True:
        step = fuse_affine_once(idx, shapes)
        fused += step
        if not step:
            break
    return PassResult(model, bool(fused), _summarize("fused constant", fused))


# --- MatMul + Add -> Gemm ------------------------------------------------------------------------


@register("matmul-to-gemm")
def matmul_to_gemm(model: onnx.ModelProto) -> PassResult:
    """Turn a 2-D MatMul followed by an Add into one Gemm.

    Our own pass. Both MatMul inputs must be known to be 2-D (batched MatMul is not a
    Gemm), the MatMul must feed only the Add, and the added tensor must broadcast one way
    to the [M, N] result (Gemm's C cannot grow the output).
    """
    idx = GraphIndex(model.graph)
    shapes = LazyShapes(model)
    fused = []
    for mm in list(idx.graph.node):
        if mm.op_type != "MatMul" or mm.domain:
            continue
        a_shape, b_shape = shapes.get(mm.input[0]), shapes.get(mm.input[1])
        if not a_shape or not b_shape or len(a_shape) != 2 or len(b_shape) != 2:
            continue
        add = idx.only_consumer(mm.output[0])
        if add is None or add.op_type != "Add" or add.domain:
            continue
        other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        if other == mm.output[0]:
            continue
        c_shape = shapes.get(other)
        n, m = b_shape[1], a_shape[0]
        if c_shape is None or n is None or len(c_shape) > 2:
            continue
        if c_shape and c_shape[-1] not in (1, n):
            continue
        if len(c_shape) == 2 and (c_shape[0] is None or c_shape[0] not in (1, m)):
            continue
        a, b = mm.input[0], mm.input[1]
        idx.remove_nodes([add])
        mm.op_type = "Gemm"
        del mm.input[:]
        mm.input.extend([a, b, other])
        mm.output[0] = add.output[0]
        if not mm.name:
            mm.name = add.name
        fused.append(mm.name or mm.output[0])
        idx.refresh()
    return PassResult(model, bool(fused), _summarize("fused MatMul+Add into Gemm", fused))


# --- Transpose pairs ---------------------------------------------------------------------------


def _perm(node: onnx.NodeProto, rank: int | None) -> list[int] | None:
    p = attr(node, "perm")
    if p is not None:
        return list(p)
    return list(range(rank))[::-1] if rank is not None else None


@register("cancel-transposes")
def cancel_transposes(model: onnx.ModelProto) -> PassResult:
    """Remove Transpose pairs that undo each other; merge other consecutive pairs into one.

    Our own pass. Transpose(p1) then Transpose(p2) equals Transpose(q) with
    q[i] = p1[p2[i]]; when q is the identity both go (the first stays if something else
    reads it), otherwise the second is replaced by one Transpose(q) reading the first's
    input.
    """
    idx = GraphIndex(model.graph)
    shapes = LazyShapes(model)
    cancelled, merged = [], []
    changed = True
    while changed:
        changed = False
        for t2 in list(idx.graph.node):
            if t2.op_type != "Transpose" or t2.domain:
                continue
            t1 = idx.producer.get(t2.input[0])
            if t1 is None or t1.op_type != "Transpose" or t1.domain:
                continue
            shape = shapes.get(t1.input[0])
            rank = len(shape) if shape is not None else None
            p1, p2 = _perm(t1, rank), _perm(t2, rank)
            if p1 is None or p2 is None or len(p1) != len(p2):
                continue
            q = [p1[i] for i in p2]
            if q == list(range(len(q))):
                if not idx.bypass(t2.output[0], t1.input[0]):
                    continue
                idx.remove_nodes([t2])
                if idx.n_uses(t1.output[0]) == 0:
                    idx.remove_nodes([t1])
                cancelled.append(t2.name or t2.output[0])
            else:
                if idx.n_uses(t1.output[0]) != 1:
                    continue  # merging would duplicate work, not remove it
                t2.input[0] = t1.input[0]
                set_attr(t2, "perm", q)
                idx.refresh()
                idx.remove_nodes([t1])
                merged.append(t2.name or t2.output[0])
            changed = True
            break
    notes = []
    if cancelled:
        notes.append(f"cancelled {plural(len(cancelled), 'inverse Transpose pair')}")
    if merged:
        notes.append(f"merged {plural(len(merged), 'Transpose pair')} into single Transposes")
    return PassResult(model, bool(notes), notes)


def _summarize(what: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")
    return [f"{what}: {shown}"]
