"""Unsigned activations on backends that store only signed int8, by shifting them.

A never-negative tensor x (a Relu / Relu6 output) stored as uint8 over [0, amax] has 255
steps of s = amax / 255; ncnn, TensorRT, Ascend and vacc store symmetric int8 only, which
spends half its grid on values x never takes. Stored as x' = x - c with c = 127 s, x'
spans [-127 s, 128 s]: int8 with scale s holds every uint8 level but the top one. The
shift is exact in float, so the model keeps its function:

- the producer Conv's bias takes -c and its Relu / Clip bounds move by -c
  (Relu -> Clip(-c), Clip(0, 6) -> Clip(-c, 6 - c));
- every consumer Conv computes W * x' and gets back the missing W * c, c times its kernel
  sum, in its bias; its padding must read x = 0, i.e. x' = -c, so an explicitly padded
  Conv reads x' through a Pad filled with -c (the backends fold it into the Conv: pnnx
  into ncnn's pad_value, and -c is exactly -127 steps); under SAME padding, a constant
  map added after the Conv puts back what zero padding cut (c times the kernel taps that
  fall outside the input, per output position).

When x is not such a Relu / Clip output (a residual Add's Relu, a MaxPool, a Concat) or
is also read by other ops, a Sub node makes x - c for its Convs and the other readers
keep x. Tensors read by an int8 layer other than a Conv (Gemm, MatMul, ConvTranspose) stay
signed, one bit less. Consumers' weights are not touched: the plan's integers reach the
backend unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import (
    Names,
    add_initializer,
    const_array,
    set_const_input,
    to_ir,
    to_proto,
    value_shapes,
)
from graphkit.quant.deploy import channel_scales, nearest_integers
from graphkit.quant.signs import _clip_floor
from graphkit.quant.table import ActivationEntry, QuantPlan
from graphkit.quant.weights import QUANTIZED_OPS
from graphkit.runtime.ort import run, sample_inputs

QMAX = 127  # the shifted tensor's int8 grid: -127..127 steps of the uint8 scale


@dataclass
class Site:
    """Where one tensor can be shifted: the node making it, the Convs reading it."""

    producer: ir.Node
    consumers: list[ir.Node]
    size: tuple[int, int] | None  # (H, W) of the tensor, needed when a reader pads
    # the Conv before a Relu / Clip read by Convs only: its bias and the bounds take the
    # shift; None: a Sub makes the shifted copy the Convs read
    before: ir.Node | None


def shiftable(model: onnx.ModelProto | ir.Model, names: list[str]) -> list[str]:
    """Those of `names` (never-negative tensors) that `shift_for_signed` can shift."""
    ir_model = model if isinstance(model, ir.Model) else to_ir(model)
    sites = _sites(ir_model, names)
    return [n for n in names if n in sites]


def shift_for_signed(
    plan: QuantPlan, model: onnx.ModelProto
) -> tuple[QuantPlan, onnx.ModelProto, list[str]]:
    """(plan, model, shifted) for a backend with signed int8 only: the plan's unsigned
    activations that can be shifted become signed entries of the same step on the shifted
    model, under new names (`shifted`; x becomes x_shifted); the others become plain
    signed entries (one bit less). `model` is the plan's deploy model (its weights are
    what the consumers' corrections sum)."""
    unsigned = plan.unsigned_activations()
    out = copy.deepcopy(plan)
    out.set_unsigned([])
    if not unsigned:
        return out, model, []
    ir_model = to_ir(model)
    sites = _sites(ir_model, unsigned)
    shifts = {}
    for name in sites:
        entry = out.activations[name]
        step = entry.amax / 255
        shifts[name] = QMAX * step
        # signed grid of the uint8 step (scale amax / 127 = step), values x - c
        entry.amax = QMAX * step
        entry.min = None if entry.min is None else entry.min - shifts[name]
        entry.max = None if entry.max is None else entry.max - shifts[name]
    names = _apply(ir_model, sites, shifts, plan, out.activations)
    return out, to_proto(ir_model), names


def _sites(model: ir.Model, names: list[str]) -> dict[str, Site]:
    graph = model.graph
    values = {v.name: v for n in graph for v in n.outputs}
    found: dict[str, tuple[ir.Node, list[ir.Node], bool]] = {}
    for name in names:
        value = values.get(name)
        node = value.producer() if value is not None else None
        if value is None or node is None or value.is_graph_output():
            continue
        readers = [u.node for u in value.uses()]
        convs = [c for c in readers if c.op_type == "Conv" and c.inputs[0] is value]
        if not convs or any(c.op_type in QUANTIZED_OPS and c not in convs for c in readers):
            continue  # every int8 layer reading it must be a Conv that can take it back
        if any((w := _constant(c, 1)) is None or w.ndim != 4 for c in convs):
            continue  # 2-D Convs with a constant weight only
        found[name] = (node, convs, len(convs) == len(readers))
    padded = [n for n, (_, convs, _) in found.items() if any(_same_pads(c) for c in convs)]
    sizes = _sizes(model, padded)
    out: dict[str, Site] = {}
    for name, (node, convs, only_convs) in found.items():
        if name in padded and name not in sizes:
            continue  # the border map needs the height and width
        before = _conv_before(node) if only_convs else None
        out[name] = Site(node, convs, sizes.get(name), before)
    return out


def _sizes(model: ir.Model, names: list[str]) -> dict[str, tuple[int, int]]:
    """(H, W) of the 4-D tensors `names`: from shape inference, else from one onnxruntime
    run on random inputs when the model's inputs have a fixed size (a channel shuffle's
    computed Reshape defeats inference, Lite-HRNet's)."""
    if not names:
        return {}
    shapes = value_shapes(model)
    out = {}
    for name in names:
        shape = shapes.get(name)
        if shape is not None and len(shape) == 4 and shape[2] and shape[3]:
            out[name] = (int(shape[2]), int(shape[3]))
    missing = [n for n in names if n not in out]
    if missing and _fixed_inputs(model):
        proto = to_proto(model)
        try:
            got = run(proto, sample_inputs(proto), missing)
        except GraphkitError:
            return out
        out |= {n: (a.shape[2], a.shape[3]) for n, a in got.items() if a.ndim == 4}
    return out


def _fixed_inputs(model: ir.Model) -> bool:
    """Every graph input's dims known but the first (a free batch runs as 1)."""
    return all(
        v.shape is not None and all(isinstance(d, int) for d in list(v.shape)[1:])
        for v in model.graph.inputs
        if not v.is_initializer()
    )


def _conv_before(act: ir.Node) -> ir.Node | None:
    """The Conv whose bias can take the shift, with the bounds of `act` (a Relu / Clip(0,
    ..) reading that Conv alone), or None."""
    if act.op_type == "Clip":
        if _clip_floor(act) != 0.0 or _clip_ceiling(act) is False:
            return None
    elif act.op_type != "Relu":
        return None
    y = act.inputs[0]
    conv = y.producer() if y is not None else None
    if y is None or conv is None or conv.op_type != "Conv" or _constant(conv, 1) is None:
        return None
    return conv if not y.is_graph_output() and len(y.uses()) == 1 else None


def _apply(
    model: ir.Model,
    sites: dict[str, Site],
    shifts: dict[str, float],
    plan: QuantPlan,
    entries: dict[str, ActivationEntry],
) -> list[str]:
    """Rewrite the model; keep `entries` (the shifted plan's activations) covering the
    tensors that moved, for a backend that wants every tensor's range (TensorRT's cache).
    Returns the shifted tensors' new names."""
    graph = model.graph
    names = Names(graph)
    opset = model.opset_imports.get("", 13)
    # every tensor holding shifted values takes a new name, so that nothing pairs it with
    # the original's tensor of the old name (`graphkit diff` matches tensors by name)
    shifted: dict[str, str] = {}
    for name, site in sites.items():  # the shifted tensors first...
        c = shifts[name]
        entry = entries.pop(name)
        if site.before is not None:  # the Conv before the Relu / Clip takes the shift
            _add_to_bias(graph, site.before, -c, names)
            _lower_bounds(graph, site.producer, c, opset, names)
            y = site.before.outputs[0]
            old = y.name or ""
            y.name = names.fresh(f"{old}_shifted")
            if old in entries:  # the Conv's output moved by -c
                entries[y.name] = _moved(entries.pop(old), -c, -c)
            value = site.consumers[0].inputs[0]
            assert value is not None  # `_sites`: the Convs read it
            value.name = names.fresh(f"{name}_shifted")
            shifted[name] = value.name
        else:  # the other readers read x as it was (a signed entry of the old grid)
            shifted[name] = _subtract(graph, site, c, names)
            entries[name] = replace(plan.activations[name], unsigned=False)
        entries[shifted[name]] = entry
    for name, site in sites.items():  # ...then the Convs reading them take the shift back
        c = shifts[name]
        for conv in site.consumers:
            w = _as_run(conv, plan)
            _add_to_bias(graph, conv, c * w.sum(axis=(1, 2, 3)), names)
            if _explicit_pads(conv):
                # padded with x = 0, i.e. x' = -c: a Pad that pnnx folds into the ncnn
                # Convolution's pad_value (its int8 layers get a float Padding layer,
                # ncnn.exporter.to_int8); the Pad's output is the Conv's int8 input
                padded = _pad_before(graph, conv, -c, opset, names)
                entries[padded] = replace(entries[shifted[name]], consumers=[])
            elif _same_pads(conv):  # the missing taps put back after the Conv
                assert site.size is not None  # _sites checked it
                border = c * (
                    _inside_sums(conv, w, site.size) - w.sum(axis=(1, 2, 3))[:, None, None]
                )
                edge = float(np.abs(border).max())
                if edge > 0:
                    out = conv.outputs[0].name or ""
                    before = _add_after(graph, conv, border[None].astype(np.float32), names)
                    if out in entries:  # the Conv's own output: the sum less the border
                        entries[before] = _moved(entries[out], -edge, edge)
    return list(shifted.values())


def _moved(entry: ActivationEntry, low: float, high: float) -> ActivationEntry:
    """An entry for values moved by at most [low, high] from the entry's tensor."""
    lo = None if entry.min is None else entry.min + low
    hi = None if entry.max is None else entry.max + high
    return replace(entry, amax=entry.amax + max(-low, high), min=lo, max=hi, consumers=[])


def _as_run(conv: ir.Node, plan: QuantPlan) -> np.ndarray:
    """The consumer's weights as the backend runs them: on the plan's grid (nearest
    rounding is exact for a deploy model's q * scale, and what a backend does with a plan
    that leaves rounding to it), float where the plan keeps the layer float."""
    w = _weight(conv).astype(np.float64)
    entry = plan.weights.get(conv.inputs[1].name or "")  # type: ignore[union-attr]
    if entry is None or conv.name in plan.keep_float:
        return w
    return nearest_integers(w, entry) * channel_scales(entry, w.ndim)


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    return const_array(node.inputs[index]) if len(node.inputs) > index else None


def _weight(conv: ir.Node) -> np.ndarray:
    w = _constant(conv, 1)
    assert w is not None  # `_sites` takes only Convs with a constant weight
    return w


def _clip_ceiling(act: ir.Node) -> float | None | bool:
    """A Clip's upper bound: a number, None (unbounded) or False (not a constant)."""
    attr = act.attributes.get("max")
    if attr is not None:
        return float(attr.as_float())
    if len(act.inputs) < 3 or act.inputs[2] is None:
        return None
    high = const_array(act.inputs[2])
    return False if high is None else float(high.reshape(-1)[0])


def _add_to_bias(graph: ir.Graph, conv: ir.Node, delta: np.ndarray | float, names: Names) -> None:
    """The Conv's bias plus `delta` (a scalar or one value per output channel)."""
    channels = _weight(conv).shape[0]
    old = _constant(conv, 2)
    bias = np.zeros(channels) if old is None else old.astype(np.float64)
    set_const_input(graph, conv, 2, (bias + delta).astype(np.float32), names)


def _lower_bounds(graph: ir.Graph, act: ir.Node, c: float, opset: int, names: Names) -> None:
    """Relu -> Clip(-c); Clip(0, hi) -> Clip(-c, hi - c)."""
    high = _clip_ceiling(act) if act.op_type == "Clip" else None
    assert high is not False  # `_sites` takes only constant bounds
    act.op_type = "Clip"
    if opset < 11:
        act.attributes["min"] = ir.AttrFloat32("min", -c)
        if high is not None:
            act.attributes["max"] = ir.AttrFloat32("max", high - c)
        return
    act.resize_inputs(3 if high is not None else 2)
    low = add_initializer(graph, np.array(-c, np.float32), names.fresh(f"{act.name}_shift_min"))
    act.replace_input_with(1, low)
    if high is not None:
        top = np.array(high - c, np.float32)
        act.replace_input_with(2, add_initializer(graph, top, names.fresh(f"{act.name}_shift_max")))


def _same_pads(conv: ir.Node) -> bool:
    auto = conv.attributes.get("auto_pad")
    return auto is not None and auto.as_string() in ("SAME_UPPER", "SAME_LOWER")


def _pad_before(graph: ir.Graph, conv: ir.Node, value: float, opset: int, names: Names) -> str:
    """Move the Conv's explicit padding into a Pad filling with `value`; returns the Pad's
    output (the Conv's input now)."""
    source = conv.inputs[0]
    assert source is not None
    pads = _ints(conv, "pads", [0, 0, 0, 0])
    full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]  # N, C, H, W begins, then ends
    hint = f"{source.name}_pad_{conv.name}"
    name = names.fresh(hint)
    if opset < 11:
        pad = ir.Node("", "Pad", inputs=[source], name=names.fresh(f"{hint}_node"))
        pad.attributes["pads"] = ir.AttrInt64s("pads", full)
        pad.attributes["value"] = ir.AttrFloat32("value", value)
    else:
        widths = add_initializer(graph, np.array(full, np.int64), names.fresh(f"{hint}_pads"))
        fill = add_initializer(graph, np.array(value, np.float32), names.fresh(f"{hint}_value"))
        pad = ir.Node("", "Pad", inputs=[source, widths, fill], name=names.fresh(f"{hint}_node"))
    pad.attributes["mode"] = ir.AttrString("mode", "constant")  # pnnx folds only this form
    out = pad.outputs[0]
    out.name = name
    out.type = source.type
    conv.attributes["pads"] = ir.AttrInt64s("pads", [0, 0, 0, 0])
    conv.replace_input_with(0, out)
    graph.insert_before(conv, pad)
    return out.name


def _explicit_pads(conv: ir.Node) -> bool:
    pads = conv.attributes.get("pads")
    return not _same_pads(conv) and pads is not None and any(p != 0 for p in pads.as_ints())


def _inside_sums(conv: ir.Node, w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C_out, H_out, W_out) of a SAME-padded Conv: each output's kernel summed over the
    taps inside the input (explicit pads go through `_pad_before` instead)."""
    k = w.shape[2:]
    strides = _ints(conv, "strides", [1, 1])
    dilations = _ints(conv, "dilations", [1, 1])
    upper = conv.attributes["auto_pad"].as_string() == "SAME_UPPER"
    inside = []
    for axis in range(2):
        n, s, d = size[axis], strides[axis], dilations[axis]
        count = -(-n // s)
        total = max((count - 1) * s + (k[axis] - 1) * d + 1 - n, 0)
        begin = total // 2 if upper else total - total // 2
        index = np.arange(count)[:, None] * s - begin + np.arange(k[axis])[None, :] * d
        inside.append(((index >= 0) & (index < n)).astype(np.float64))
    return np.einsum("okl,hk,wl->ohw", w.sum(axis=1), inside[0], inside[1])


def _ints(node: ir.Node, key: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(key)
    return list(attr.as_ints()) if attr is not None else default


def _subtract(graph: ir.Graph, site: Site, c: float, names: Names) -> str:
    """x - c for the site's Convs; the other readers keep x. Returns the new tensor's name."""
    value = site.consumers[0].inputs[0]
    assert value is not None  # `_sites`: the Convs read it
    name = value.name or ""
    const = add_initializer(graph, np.array(c, np.float32), names.fresh(f"{name}_shift"))
    sub = ir.Node("", "Sub", inputs=[value, const], name=names.fresh(f"{name}_shift_node"))
    shifted = sub.outputs[0]
    for use in list(value.uses()):
        if use.node in site.consumers:
            use.node.replace_input_with(use.idx, shifted)
    shifted.name = names.fresh(f"{name}_shifted")
    shifted.shape, shifted.type = value.shape, value.type
    graph.insert_after(site.producer, sub)
    return shifted.name


def _add_after(graph: ir.Graph, conv: ir.Node, border: np.ndarray, names: Names) -> str:
    """conv's output + border, under the output's name (its readers read the sum); returns
    the Conv's output's new name."""
    out = conv.outputs[0]
    name = out.name
    out.name = names.fresh(f"{name}_before_shift_border")
    const = add_initializer(graph, border, names.fresh(f"{conv.name}_shift_border"))
    add = ir.Node("", "Add", inputs=[out, const], name=names.fresh(f"{conv.name}_shift_border"))
    total = add.outputs[0]
    for use in list(out.uses()):
        if use.node is not add:
            use.node.replace_input_with(use.idx, total)
    if out.is_graph_output():
        graph.outputs[graph.outputs.index(out)] = total
    total.name = name
    total.shape, total.type = out.shape, out.type
    graph.insert_after(conv, add)
    return out.name or ""
