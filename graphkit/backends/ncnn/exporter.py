"""ncnn: the ncnn2table table and the int8 model ncnn2int8 would write, run for real.

ONNX names do not survive pnnx, so the ncnn model is calibrated as ncnn2table does: run
it with the ncnn bindings, observe the input blob of every Convolution /
ConvolutionDepthWise / InnerProduct, and apply the table's method with the same
observers and calibrators as the ONNX path. Without data, a layer takes the amax of its
ONNX twin from the table; twins are found by their weights (pnnx copies them unchanged).

With a plan (the usual case) every ncnn layer with an ONNX twin takes the plan's
decisions: its input threshold, and weight scales qmax / amax that turn the deploy
model's snapped weights back into the plan's integers; ncnn's own calibration runs only
for layers without a twin (or for all with `recalibrate=True`). pnnx's Gemm layers for
token Linears are first rewritten as InnerProducts (`linear`), so they are int8 too.

Table lines (ncnn2table): first `<layer>_param_0 s0 s1 ...` per output channel (per group
for depthwise) with s = 127 / absmax (ncnn2table uses 31 / absmax for a 3x3 stride-1
dilation-1 Convolution, for its 6-bit int8 Winograd: `winograd_6bit=True` does the same;
measured with ncnn 1.0.20261020 on x86, 8-bit weights on such a layer run exactly as in
onnxruntime's Q/DQ, so the default keeps the plan's 8-bit integers); then `<layer> s` with
s = 127 / threshold of the layer's input. int8 model (ncnn2int8): `8=2` (Convolution,
InnerProduct) or `8=1` (depthwise) in the param; in the bin the weights tagged int8
(round, clamp +-127, padded to 4 bytes), bias fp32, weight scales, the bottom scale; and
ncnn2int8's requantize fusion: a conv whose output only int8 convs read gets `8=102` /
`8=101` and the reader's input scale as a top scale, so it hands them int8 directly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

import graphkit.backends.ncnn.runtime as nc
from graphkit.backends._common import (
    ExportedFile,
    check_table,
    main_readers,
    proto_nodes,
    write_all,
)
from graphkit.errors import BackendError, GraphkitError
from graphkit.irgraph import to_ir

if TYPE_CHECKING:
    from graphkit.backends.ncnn.convert import NcnnModel
from graphkit.logs import step
from graphkit.metrics import sqnr_db
from graphkit.model import save_model
from graphkit.quant.table import CalibrationTable

QUANT_TYPES = nc.INT8_TERM_TYPES  # the layer types ncnn2int8 quantizes
# Convolution / ConvolutionDepthWise pad_value (pnnx folds a constant Pad into it): the
# int8 path pads the quantized input with it, and x86's packed int8 padding sign-extends a
# negative value into 7 of every 8 channels (docs/exporters.md, benchmarks/ncnn_pad_value.py),
# so an int8 layer gets its padding as a float Padding layer before it
PAD_VALUE = 18
PADS = (4, 15, 14, 16)  # pad left, right, top, bottom
OUTPUTS_FILE = "model.outputs.json"  # beside the params: {"outputs": {ONNX name: blob}}
Samples = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class NcnnTable:
    """What ncnn2table writes: per-layer weight scales and input (bottom blob) scales."""

    weights: dict[str, list[float]] = field(default_factory=dict)  # layer -> per channel
    activations: dict[str, float] = field(default_factory=dict)  # layer -> input scale

    def text(self) -> str:
        for name in [*self.weights, *self.activations]:
            if not name or any(c.isspace() for c in name) or "_param_" in name:
                raise GraphkitError(
                    f"layer name {name!r} cannot go in an ncnn table (spaces or '_param_' in it)"
                )
        lines = [f"{k}_param_0 " + " ".join(_f(s) for s in v) for k, v in self.weights.items()]
        lines += [f"{k} {_f(s)}" for k, s in self.activations.items()]
        return "".join(line + "\n" for line in lines)


def _f(x: float) -> str:
    return f"{x:.9g}"


def parse_table(text: str) -> NcnnTable:
    """ncnn2int8's reading: a key with `_param_` is a weight line, anything else a blob."""
    t = NcnnTable()
    for n, line in enumerate(text.splitlines(), start=1):
        tok = line.split()
        if not tok:
            continue
        try:
            vals = [float(v) for v in tok[1:]]
        except ValueError:
            raise GraphkitError(f"ncnn table line {n} has a value that is not a number") from None
        key = tok[0]
        if "_param_" in key:
            layer, _, idx = key.rpartition("_param_")
            if idx == "0":
                t.weights[layer] = vals
        else:
            t.activations[key] = vals[0]
    return t


def winograd_3x3(layer: nc.Layer) -> bool:
    """A 3x3 stride-1 dilation-1 Convolution: ncnn2table gives it 6-bit weights."""
    if layer.type != "Convolution":
        return False
    k = (layer.get(1), layer.get(11, layer.get(1)))
    d = (layer.get(2, 1), layer.get(12, layer.get(2, 1)))
    s = (layer.get(3, 1), layer.get(13, layer.get(3, 1)))
    return k == (3, 3) and d == (1, 1) and s == (1, 1)


def weight_scales(layer: nc.Layer, w: np.ndarray, winograd_6bit: bool = False) -> list[float]:
    """127 / absmax per output channel (per group for depthwise); 31 / absmax for 3x3 s1 d1."""
    groups = int(layer.get(7, 1)) if layer.type == "ConvolutionDepthWise" else int(layer.get(0))
    absmax = np.abs(w.astype(np.float32)).reshape(groups, -1).max(axis=1)
    qmax = 31.0 if winograd_6bit and winograd_3x3(layer) else 127.0
    # an all-zero channel: any scale works, ncnn's 127/0 = inf would poison the bin
    return [float(qmax / a) if a > 0 else 1.0 for a in absmax]


def plan_weight_scales(
    table: CalibrationTable, node: ir.Node | None, layer: nc.Layer, winograd_6bit: bool
) -> list[float] | None:
    """qmax / amax of the twin's plan entry (the scales that give back the plan's integers
    from the snapped weights), or None when ncnn must derive its own."""
    if node is None or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    entry = table.weights.get(weight.name or "") if weight is not None else None
    if entry is None or not entry.int8:
        return None
    groups = int(layer.get(7, 1)) if layer.type == "ConvolutionDepthWise" else int(layer.get(0))
    if len(entry.amax) != groups:  # grouped (not depthwise) conv: ncnn has a scale per group
        return None
    if winograd_6bit and winograd_3x3(layer):
        return None  # ncnn2table's 6-bit rule asked for: the backend's own grid
    return [float(entry.qmax / a) if a > 0 else 1.0 for a in entry.amax]


def quantize_weights(w: np.ndarray, scales: list[float]) -> np.ndarray:
    """ncnn's float2int8: round half away from zero, clamp to [-127, 127], per channel."""
    rows = np.asarray(w, np.float32).reshape(len(scales), -1)
    q = rows * np.asarray(scales, np.float32)[:, None]
    q = np.sign(q) * np.floor(np.abs(q) + 0.5)
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


CONV_TYPES = ("Convolution", "ConvolutionDepthWise")


def requantized_tops(param: nc.Param, table: NcnnTable) -> dict[str, float]:
    """Top blob -> scale of every layer of an int8 param that writes int8 (8=101/102)."""
    pairs = requantize_pairs(param, set(table.activations))
    return {param.layer(a).tops[0]: table.activations[b] for a, b in pairs.items()}


def requantize_pairs(param: nc.Param, int8_layers: set[str]) -> dict[str, str]:
    """int8 conv -> the int8 conv whose input scale its output is requantized to, by
    ncnn2int8's two rules: a conv read directly by a later conv, or through a Split whose
    every output a conv reads (then the conv reading the Split's first output). The conv
    then writes int8 (8=101/102, one more scale in the bin) instead of float."""
    layers = param.layers
    first_reader: dict[str, nc.Layer] = {}
    for lay in layers:
        if lay.type in CONV_TYPES and len(lay.bottoms) == 1:
            first_reader.setdefault(lay.bottoms[0], lay)
    splits = {
        lay.bottoms[0]: lay for lay in layers if lay.type == "Split" and len(lay.bottoms) == 1
    }
    pairs: dict[str, str] = {}

    def takes_int8(reader: nc.Layer | None) -> bool:
        # a reader with a pad_value reads through a float Padding layer (`to_int8`)
        return reader is not None and reader.name in int8_layers and not reader.get(PAD_VALUE)

    for lay in layers:
        if lay.type not in CONV_TYPES or lay.name not in int8_layers:
            continue
        top = lay.tops[0]
        reader = first_reader.get(top)
        if reader is None and top in splits:
            readers = [first_reader.get(t) for t in splits[top].tops]
            if all(takes_int8(r) for r in readers):
                reader = readers[0]
        if reader is not None and takes_int8(reader):
            pairs[lay.name] = reader.name
    return pairs


def to_int8(
    param: nc.Param, blobs: dict[str, list[nc.Blob]], table: NcnnTable, requantize: bool = True
) -> tuple[str, bytes]:
    """The (param text, bin bytes) ncnn2int8 writes for `table`, with its requantize
    fusion (`requantize_pairs`) unless `requantize=False`."""
    out_blobs = {k: list(v) for k, v in blobs.items()}
    fused = requantize_pairs(param, set(table.activations)) if requantize else {}
    blob_count = param.blob_count
    layers = []
    for layer in param.layers:
        layer = nc.Layer(layer.type, layer.name, layer.bottoms, layer.tops, dict(layer.params))
        layers.append(layer)
        if layer.type not in QUANT_TYPES or layer.name not in table.activations:
            continue
        ws = table.weights.get(layer.name)
        if ws is None:
            raise GraphkitError(
                f"layer {layer.name} has an input scale but no {layer.name}_param_0 line"
            )
        cur = {b.role: b for b in blobs[layer.name]}
        if cur["weight"].data.dtype == np.int8:
            raise GraphkitError(f"layer {layer.name} is already int8")
        term = 1 if layer.type == "ConvolutionDepthWise" else 2
        layer.params[8] = str(term + (100 if layer.name in fused else 0))
        if layer.get(PAD_VALUE):  # the shifted activations' -c (graphkit.quant.shift)
            layers.insert(len(layers) - 1, _padding_before(layer, f"{layer.name}_padded"))
            blob_count += 1
        new = [nc.Blob("weight", quantize_weights(cur["weight"].data, ws))]
        if "bias" in cur:
            new.append(cur["bias"])
        new.append(nc.Blob("weight_scales", np.asarray(ws, np.float32)))
        new.append(
            nc.Blob("bottom_scales", np.asarray([table.activations[layer.name]], np.float32))
        )
        if layer.name in fused:
            top = table.activations[fused[layer.name]]
            new.append(nc.Blob("top_scales", np.asarray([top], np.float32)))
        out_blobs[layer.name] = new
    p = nc.Param(layers, blob_count)
    return p.text(), nc.write_bin(p, out_blobs)


def _padding_before(conv: nc.Layer, blob: str) -> nc.Layer:
    """A float Padding layer doing the conv's padding (with its pad_value) into `blob`,
    which the conv then reads unpadded."""
    left = int(conv.get(PADS[0]))
    right, top = int(conv.get(PADS[1], left)), int(conv.get(PADS[2], left))
    bottom = int(conv.get(PADS[3], top))
    value = conv.params.pop(PAD_VALUE)
    pad = nc.Layer("Padding", f"{conv.name}_pad", list(conv.bottoms), [blob], {})
    pad.params = {0: str(top), 1: str(bottom), 2: str(left), 3: str(right), 4: "0", 5: value}
    for key in PADS:
        conv.params.pop(key, None)
    conv.bottoms = [blob]
    return pad


def _weight_key(w: np.ndarray) -> str:
    """Layout-independent fingerprint of a weight (pnnx may reshape, never changes values)."""
    return hashlib.sha1(np.sort(np.asarray(w, np.float32).ravel()).tobytes()).hexdigest()


def _twins(graph: ir.Graph, param: nc.Param, blobs: dict[str, list[nc.Blob]]) -> dict[str, ir.Node]:
    """`match_layers` on the IR graph."""
    by_key: dict[str, ir.Node] = {}
    for init in graph.initializers.values():
        users = [u for u in main_readers(init, graph) if u.op_type in ("Conv", "Gemm", "MatMul")]
        tensor = init.const_value
        if len(users) == 1 and tensor is not None and tensor.shape.dims and tensor.size > 1:
            by_key[_weight_key(tensor.numpy())] = users[0]
    out = {}
    for layer in param.layers:
        if layer.type in QUANT_TYPES and layer.name in blobs:
            w = blobs[layer.name][0].data
            node = by_key.get(_weight_key(w))
            if node is not None:
                out[layer.name] = node
    return out


def match_layers(
    model: onnx.ModelProto, param: nc.Param, blobs: dict[str, list[nc.Blob]]
) -> dict[str, onnx.NodeProto]:
    """ncnn layer name -> the ONNX node whose weight it carries."""
    graph = to_ir(model).graph
    protos = proto_nodes(model, graph)
    return {k: protos[id(n)] for k, n in _twins(graph, param, blobs).items()}


def _method_settings(method: str, settings: dict) -> tuple[Callable, dict]:
    from graphkit.quant import calibrators

    fn = calibrators.CALIBRATORS[calibrators.canonical_method(method)]
    names = set(inspect.signature(fn).parameters) - {"stats"}
    return fn, {k: v for k, v in settings.items() if k in names}


def calibrate_ncnn(
    net: nc.NcnnNet,
    param: nc.Param,
    layers: list[str],
    samples: Iterable[dict[str, np.ndarray]],
    method: str,
    settings: dict | None = None,
    input_map: dict[str, str] | None = None,
) -> dict[str, float]:
    """Input threshold (amax) of each named layer, observed on the ncnn model itself.

    settings: the method's options; `bins` is the resolution the statistics are collected
    at, as on the ONNX path (each method re-bins them to its own, e.g. kl-ncnn's 2048)."""
    from graphkit.quant.observers import DEFAULT_BINS, check_bins, collect_stats

    settings = dict(settings or {})
    bins = check_bins(settings.pop("bins", DEFAULT_BINS))
    bottoms = {name: param.layer(name).bottoms[0] for name in layers}
    blobs = nc.iter_blobs(net, samples, sorted(set(bottoms.values())), input_map)
    stats = collect_stats(blobs, bins=bins)
    if not stats:
        raise GraphkitError("no calibration samples reached the ncnn model")
    if not any(stats[b].count for b in bottoms.values() if b in stats):
        raise GraphkitError(
            "calibration found no activation ranges: no layer input of the ncnn model held "
            "a finite value (check the data for NaN or inf)"
        )
    fn, kw = _method_settings(method, settings)
    return {name: float(fn(stats[b], **kw)) for name, b in bottoms.items()}


def compare(
    fp32: nc.NcnnNet,
    int8: nc.NcnnNet,
    samples: Iterable[dict[str, np.ndarray]],
    outputs: list[str],
    layer_tops: Sequence[str] = (),
    input_map: dict[str, str] | None = None,
    requantized: dict[str, float] | None = None,
) -> dict:
    """Cosine of outputs (mean over samples, per output) and SQNR (dB) of quantized layers'
    outputs. `requantized`: top blob -> scale of layers that write int8 (requantize
    fusion), whose extracted values are int8 codes, divided by it here."""
    requantized = requantized or {}
    cos: dict[str, list[float]] = {o: [] for o in outputs}
    sig: dict[str, float] = {t: 0.0 for t in layer_tops}
    err: dict[str, float] = {t: 0.0 for t in layer_tops}
    n = 0
    names = list(outputs) + list(layer_tops)
    for feeds in samples:
        feeds = {input_map.get(k, k): v for k, v in feeds.items()} if input_map else feeds
        a, b = fp32.run(feeds, names), int8.run(feeds, names)
        for o in outputs:
            x, y = a[o].ravel().astype(np.float64), b[o].ravel().astype(np.float64)
            den = np.linalg.norm(x) * np.linalg.norm(y)
            cos[o].append(float(x @ y / den) if den > 0 else float(np.array_equal(x, y)))
        for t in layer_tops:
            x, y = a[t].astype(np.float64), b[t].astype(np.float64)
            if t in requantized:
                y = y / requantized[t]
            sig[t] += float((x * x).sum())
            err[t] += float(((x - y) ** 2).sum())
        n += 1
    sqnr = {t: sqnr_db(sig[t], err[t]) for t in layer_tops}
    return {"samples": n, "cosine": {o: float(np.mean(v)) for o, v in cos.items()}, "sqnr_db": sqnr}


def build_table(
    table: CalibrationTable,
    model: onnx.ModelProto,
    param: nc.Param,
    blobs: dict[str, list[nc.Blob]],
    *,
    keep_float=(),
    net: nc.NcnnNet | None = None,
    samples: Iterable[dict[str, np.ndarray]] | None = None,
    input_map: dict[str, str] | None = None,
    winograd_6bit: bool = False,
    recalibrate: bool = False,
) -> tuple[NcnnTable, dict[str, str]]:
    """The ncnn table for the converted model, and the ncnn layer -> ONNX node map.

    Layers with an ONNX twin take the plan's input threshold and weight scales; `samples`
    calibrate on ncnn the layers without one (every layer with `recalibrate`)."""
    graph = to_ir(model).graph
    twins = _twins(graph, param, blobs)
    onnx_to_ncnn = {node.name: layer for layer, node in twins.items()}
    skip = set()
    ops = {n.name: n.op_type for n in graph}
    for name in sorted(set(keep_float) | set(table.keep_float)):
        if name in onnx_to_ncnn:
            skip.add(onnx_to_ncnn[name])
        elif any(lay.name == name for lay in param.layers):
            skip.add(name)
        elif ops.get(name) != "Conv":
            # a ConvTranspose (Deconvolution), or a Gemm / MatMul that pnnx wrote as an ncnn
            # Gemm rather than an InnerProduct (which would be its twin): no int8 form, float
            continue
        else:
            raise GraphkitError(
                f"--keep-float layer '{name}' has no ncnn Convolution/InnerProduct twin after conversion"
            )
    candidates = [
        lay.name
        for lay in param.layers
        if lay.type in QUANT_TYPES and lay.name in blobs and lay.name not in skip
    ]
    amax = {}
    if not recalibrate:
        for name in candidates:
            node = twins.get(name)
            first = node.inputs[0] if node is not None and node.inputs else None
            act = first.name if first is not None else None
            if act in table.activations:
                amax[name] = table.activations[act].amax
    missing = [name for name in candidates if name not in amax]
    if samples is not None and missing:
        assert net is not None  # samples are run on the net that comes with them
        amax.update(
            calibrate_ncnn(net, param, missing, samples, table.method, table.settings, input_map)
        )
    out = NcnnTable()
    for name in candidates:
        if name not in amax:
            continue
        layer = param.layer(name)
        scales = plan_weight_scales(table, twins.get(name), layer, winograd_6bit)
        if scales is None:
            scales = weight_scales(layer, blobs[name][0].data.astype(np.float32), winograd_6bit)
        out.weights[name] = scales
    for name in candidates:
        if name in amax:
            out.activations[name] = 127.0 / amax[name] if amax[name] > 0 else 1.0
    return out, {k: v.name or "" for k, v in twins.items()}


def sample_shapes(samples: Samples | None) -> dict[str, list[int]] | None:
    """The input shapes of the first calibration sample: what a model of variable input
    size (mmdeploy's dynamic exports: batch, height and width symbolic) is converted at."""
    first = next(iter(samples()), None) if samples is not None else None
    return None if first is None else {k: list(np.shape(v)) for k, v in first.items()}


def convert_or_split(
    model: onnx.ModelProto,
    d: Path,
    say: Callable[[str], None],
    shapes: dict[str, list[int]] | None = None,
) -> tuple[NcnnModel, Path | None]:
    """pnnx conversion of the whole model (at `shapes` where its inputs are variable);
    when it leaves ops ncnn cannot run, of the network without its float
    post-processing (written as model.tail.onnx)."""
    from graphkit.backends.ncnn.convert import convert
    from graphkit.backends.ncnn.split import mark_blobs, split_tail

    try:
        return convert(model, d, "model", shapes), None
    except BackendError as whole:
        parts = split_tail(model)
        if parts is None:
            raise
        say(
            f"ncnn: {str(whole).split(';')[0]}; converting the network without its float "
            f"post-processing ({len(parts.tail.graph.node)} nodes, kept as model.tail.onnx)"
        )
    nm = convert(parts.head, d, "model", shapes)
    mark_blobs(parts.tail, {t: nm.outputs.get(t, t) for t in parts.cut})
    return nm, save_model(parts.tail, d / "model.tail.onnx")


def float_in_ncnn(
    graph: ir.Graph, table: CalibrationTable, keep_float: Sequence[str], int8: set[str]
) -> str:
    """The plan's int8 layers that the ncnn model runs float, counted by ONNX op type
    ("2 ConvTranspose, 24 MatMul": Deconvolution and MatMuls of two activations have no
    ncnn int8 form), or "" when every one is int8 there too."""
    from collections import Counter

    from graphkit.quant.collect import quantized_names

    ops = {n.name or "": n.op_type for n in graph}
    left = Counter(ops[n] for n in quantized_names(graph, table, keep_float) if n not in int8)
    return ", ".join(f"{count} {op}" for op, count in sorted(left.items()))


def int8_linears(
    nm: NcnnModel,
    param: nc.Param,
    blobs: dict[str, list[nc.Blob]],
    net: nc.NcnnNet | None,
    say: Callable[[str], None],
) -> tuple[nc.Param, dict[str, list[nc.Blob]], list[str]]:
    """`linear.as_inner_product` on the converted model: pnnx's token Linears (Gemm)
    become InnerProducts, which ncnn runs in int8 with the plan's per-channel scales.
    If ncnn cannot run the model to tell their input shapes, they stay float Gemms."""
    from graphkit.backends.ncnn.linear import as_inner_product, gemm_input_shapes

    if not any(lay.type == "Gemm" for lay in param.layers):
        return param, blobs, []
    shapes = {nm.inputs[k]: s for k, s in nm.input_shapes.items() if k in nm.inputs}
    try:
        probe = net if net is not None else nc.NcnnNet(nm.param, nm.bin)
        found = gemm_input_shapes(probe, param, shapes)
    except GraphkitError as exc:
        say(f"ncnn: its Gemm layers stay float ({exc})")
        return param, blobs, []
    return as_inner_product(param, blobs, found)


def export(
    table: CalibrationTable,
    model: onnx.ModelProto,
    out_dir: Path,
    *,
    keep_float=(),
    samples: Samples | None = None,
    compare_samples: int = 8,
    winograd_6bit: bool = False,
    recalibrate: bool = False,
    int8_gemm: bool = True,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    **_: object,
) -> list[ExportedFile]:
    """Convert with pnnx, calibrate on ncnn (or map the table), write table + int8 model.
    int8_gemm=False keeps pnnx's Gemm layers float (`int8_linears`)."""
    say = step(__name__, log)
    graph = check_table(table, model, keep_float).graph  # the model's IR, walked again below
    ops = {n.name: n.op_type for n in graph}
    for name in keep_float:  # refuse before the (slow) conversion
        if ops[name] not in ("Conv", "Gemm", "MatMul"):
            raise GraphkitError(
                f"--keep-float layer '{name}' is a {ops[name]}; ncnn quantizes "
                "only Convolution and InnerProduct layers"
            )
    d = Path(out_dir) / "ncnn"
    say("ncnn: converting with pnnx")
    nm, tail = convert_or_split(model, d, say, sample_shapes(samples))
    say(
        "ncnn: calibrating every layer on the converted model"
        if recalibrate
        else "ncnn: thresholds and weight integers from the plan"
    )
    param = nc.read_param(nm.param)
    blobs = nc.read_bin(param, nm.bin.read_bytes(), str(nm.bin))
    net = nc.NcnnNet(nm.param, nm.bin, threads=threads) if samples else None
    param, blobs, linears = (
        int8_linears(nm, param, blobs, net, say) if int8_gemm else (param, blobs, [])
    )
    if linears:  # the fp32 files too, so ncnn2int8 with model.table makes the same model
        say(f"ncnn: {len(linears)} token Linears (pnnx's Gemm) written as InnerProduct")
        write_all({nm.param: param.text(), nm.bin: nc.write_bin(param, blobs)})
    ntable, twins = build_table(
        table,
        model,
        param,
        blobs,
        keep_float=keep_float,
        net=net,
        samples=samples() if samples else None,
        input_map=nm.inputs,
        winograd_6bit=winograd_6bit,
        recalibrate=recalibrate,
    )
    if not ntable.activations:
        raise GraphkitError("no ncnn layer could be given a scale (the table matches none of them)")
    unmet = float_in_ncnn(
        graph, table, keep_float, {twins[n] for n in ntable.activations if n in twins}
    )
    if unmet:
        say(f"ncnn: the plan's int8 {unmet} run float in ncnn (no int8 form there)")
    ptext, bbytes = to_int8(param, blobs, ntable)
    write_all(
        {
            d / "model.table": ntable.text(),
            d / "model.int8.param": ptext,
            d / "model.int8.bin": bbytes,
        }
    )
    note = f"{len(ntable.activations)} layers int8"
    if unmet:
        note += f"; float for want of an ncnn int8 form: {unmet}"
    if samples and compare_samples:
        say(f"ncnn: checking int8 against fp32 on {compare_samples} samples")
        int8 = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True, threads=threads)
        from itertools import islice

        tops = {param.layer(name).tops[0]: name for name in ntable.activations}
        assert net is not None  # made above when there are samples
        r = compare(
            net,
            int8,
            islice(samples(), compare_samples),
            list(nm.outputs.values()),
            list(tops),
            input_map=nm.inputs,
            requantized=requantized_tops(param, ntable),
        )
        note += "; cosine vs ncnn fp32 on {} calibration samples: {}".format(
            r["samples"], ", ".join(f"{k} {v:.4f}" for k, v in r["cosine"].items())
        )
        report = {
            "samples": r["samples"],
            "outputs": {
                blob: {"onnx": o, "cosine": r["cosine"][blob]} for o, blob in nm.outputs.items()
            },
            "layer_sqnr_db": {
                tops[t]: (v if math.isfinite(v) else None) for t, v in r["sqnr_db"].items()
            },
        }
        write_all({d / "int8_check.json": json.dumps(report, indent=1)})
        extra = [
            ExportedFile(
                d / "int8_check.json",
                "ncnn int8 vs fp32 on the first calibration samples: output cosine and the SQNR "
                "(dB) of every quantized layer's output (errors accumulate along the net)",
            )
        ]
    else:
        extra = []
    outputs_file = d / OUTPUTS_FILE  # pnnx names outputs out0, out1, ...: which is which
    write_all({outputs_file: json.dumps({"outputs": nm.outputs}, indent=1)})
    extra.append(
        ExportedFile(
            outputs_file,
            "ONNX output name -> ncnn blob (pnnx renames outputs out0, out1, ...); "
            "`graphkit eval`/`diff` read it, so a decoder of several outputs needs no "
            "decode.ncnn_outputs",
        )
    )
    if tail is not None:
        extra.append(
            ExportedFile(
                tail,
                "the float post-processing ncnn cannot run, split off the network: run it "
                "on the int8 model's outputs (its metadata maps inputs to ncnn blobs; "
                "`graphkit eval`/`diff` on model.int8.param do)",
            )
        )
    return extra + [
        ExportedFile(
            nm.param,
            "ncnn fp32 model converted by pnnx (param)"
            + (f"; its {len(linears)} token-Linear Gemms as InnerProduct" if linears else ""),
        ),
        ExportedFile(nm.bin, "ncnn fp32 weights"),
        ExportedFile(
            d / "model.table",
            "ncnn2table-format calibration table (weight lines `<layer>_param_0`, then input scales)",
            "ncnn2int8 ncnn/model.ncnn.param ncnn/model.ncnn.bin out.param out.bin ncnn/model.table",
        ),
        ExportedFile(
            d / "model.int8.param",
            f"ncnn int8 model as ncnn2int8 writes it ({note})",
            'python -c "import ncnn; net = ncnn.Net(); net.opt.use_int8_inference = True; '
            "net.load_param('ncnn/model.int8.param'); net.load_model('ncnn/model.int8.bin')\"",
        ),
        ExportedFile(d / "model.int8.bin", "ncnn int8 weights (tag 0x000D4B38) with scales"),
    ]
