"""Calibrating a model that is already ncnn: ncnn2table + ncnn2int8 on `.param/.bin`.

Users of onnx2ncnn, pnnx or mmdeploy often have only the ncnn files. Here the ncnn model
itself runs on the spec's samples (ncnn bindings, fp32), the input blob of every
Convolution / ConvolutionDepthWise / InnerProduct is observed with the same observers
and calibrators as the ONNX path (kl-ncnn by default, as ncnn2table), weight scales are
127 / absmax per output channel (per group for depthwise) from the `.bin`, and the table
and the int8 model are written as ncnn2table and ncnn2int8 write them. Every sample of
the spec is used (`limit` cuts them), the same count the JSON table of an ONNX model uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

import graphkit.backends.ncnn.runtime as nc
from graphkit.backends._common import ExportedFile, write_all
from graphkit.backends.ncnn.exporter import (
    QUANT_TYPES,
    NcnnTable,
    calibrate_ncnn,
    compare,
    requantized_tops,
    to_int8,
    weight_scales,
)
from graphkit.backends.readme import files_readme
from graphkit.errors import GraphkitError

DEFAULT_METHOD = "kl-ncnn"  # ncnn2table's default


def bin_of(param_path: str | Path) -> Path:
    """The weights beside a `.param`: same stem, `.bin`."""
    p = Path(param_path)
    return p.with_suffix(".bin")


def _input_map(spec, net: nc.NcnnNet) -> dict[str, str]:
    """The spec's input name -> the ncnn input blob it feeds."""
    name = spec.input.name
    if name in net.inputs:
        return {}
    if len(net.inputs) == 1:
        return {name: net.inputs[0]}
    raise GraphkitError(
        f"input.name '{name}' is not an input blob of the ncnn model "
        f"(its inputs: {', '.join(net.inputs)})"
    )


def _input_channels(param: nc.Param, blob: str) -> int | None:
    """The channels the model reads from input `blob`: what its Input layer declares
    (2=c), else what a Convolution reading it directly takes; None when neither says."""
    for layer in param.layers:
        if layer.type == "Input" and blob in layer.tops and int(layer.get(2, 0)) > 0:
            return int(layer.get(2))
    for layer in param.layers:
        if layer.type == "Convolution" and blob in layer.bottoms:
            kw = int(layer.get(1))
            kh = int(layer.get(11, kw))
            return int(layer.get(6)) // (int(layer.get(0)) * kw * kh)
    return None


def _check_channels(x: np.ndarray, want: int, spec) -> None:
    """ncnn takes what the ONNX model took, without the batch, as c x h x w: a sample
    whose channel count differs would be read out of shape (the layout is the usual
    mistake)."""
    chw = x.shape[1:] if x.ndim == 4 else x.shape
    if len(chw) == 3 and chw[0] != want:
        raise GraphkitError(
            f"the spec makes inputs of shape {list(x.shape)} (input.layout "
            f"{spec.input.layout}) but the ncnn model reads {want} channels first: "
            "fix input.layout"
        )


@dataclass
class NcnnCalibration:
    """What `calibrate_ncnn_model` read and ran, for `write_ncnn_int8` to write and check."""

    param: nc.Param
    blobs: dict[str, list[nc.Blob]]
    net: nc.NcnnNet
    spec: Any
    input_map: dict[str, str]
    method: str
    param_path: Path
    bin_path: Path
    samples: int  # how many the thresholds were measured on


def calibrate_ncnn_model(
    param_path: str | Path,
    data: Any,
    *,
    method: str = DEFAULT_METHOD,
    settings: dict | None = None,
    keep_float: tuple[str, ...] | list[str] = (),
    winograd_6bit: bool = False,
    limit: int | None = None,
    threads: int = 1,
    on_sample: Callable[[], None] | None = None,
) -> tuple[NcnnTable, NcnnCalibration]:
    """The ncnn2table table of an ncnn model on the samples of `data` (input spec path or
    InputSpec), and what is needed to write and check it (`write_ncnn_int8`)."""
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.quant.calibrators import canonical_method
    from graphkit.quant.observers import DEFAULT_BINS, check_bins

    method = canonical_method(method)
    # the statistics' resolution, checked as on the ONNX path before anything is read
    check_bins((settings or {}).get("bins", DEFAULT_BINS), "--bins (histogram bins)")
    param_path = Path(param_path)
    if not param_path.is_file():
        raise GraphkitError(f"ncnn param {param_path} does not exist")
    bin_path = bin_of(param_path)
    if not bin_path.is_file():
        raise GraphkitError(f"ncnn weights {bin_path} (beside {param_path.name}) do not exist")
    param = nc.read_param(param_path)
    blobs = nc.read_bin(param, bin_path.read_bytes(), str(bin_path))
    spec = data if hasattr(data, "source") else load_input_spec(data)
    if limit:
        spec = spec.with_source(limit=limit)
    net = nc.NcnnNet(param_path, bin_path, threads=threads)
    input_map = _input_map(spec, net)
    names = {layer.name for layer in param.layers}
    unknown = [k for k in keep_float if k not in names]
    if unknown:
        raise GraphkitError(f"--keep-float layer '{unknown[0]}' is not a layer of {param_path}")
    already = [
        lay.name
        for lay in param.layers
        if lay.type in QUANT_TYPES
        and lay.name in blobs
        and blobs[lay.name][0].data.dtype == np.int8
    ]
    if already:
        raise GraphkitError(
            f"{param_path} is already int8 (layer {already[0]}); give the fp32 model"
        )
    layers = [
        lay.name
        for lay in param.layers
        if lay.type in QUANT_TYPES and lay.name in blobs and lay.name not in set(keep_float)
    ]
    if not layers:
        raise GraphkitError(f"{param_path} has no Convolution or InnerProduct layer to quantize")

    count = [0]

    want = _input_channels(param, input_map.get(spec.input.name, spec.input.name))

    def samples() -> Iterator[dict[str, np.ndarray]]:
        for s in iter_samples(spec):
            if count[0] == 0 and want is not None:
                _check_channels(s.feeds[spec.input.name], want, spec)
            count[0] += 1
            if on_sample is not None:
                on_sample()
            yield s.feeds

    amax = calibrate_ncnn(net, param, layers, samples(), method, settings or {}, input_map)
    table = NcnnTable()
    for name in layers:
        table.weights[name] = weight_scales(
            param.layer(name), blobs[name][0].data.astype(np.float32), winograd_6bit
        )
    for name in layers:
        table.activations[name] = 127.0 / amax[name] if amax[name] > 0 else 1.0
    return table, NcnnCalibration(
        param, blobs, net, spec, input_map, method, param_path, bin_path, count[0]
    )


def write_ncnn_int8(
    table: NcnnTable,
    context: NcnnCalibration,
    out_dir: str | Path,
    *,
    compare_samples: int = 8,
    threads: int = 1,
) -> list[ExportedFile]:
    """The table, the int8 model (as ncnn2int8) and an int8-vs-fp32 check in `out_dir`."""
    from graphkit.data import iter_samples

    d = Path(out_dir)
    param, blobs = context.param, context.blobs
    ptext, bbytes = to_int8(param, blobs, table)
    files: dict[Path, bytes | str] = {
        d / "model.table": table.text(),
        d / "model.int8.param": ptext,
        d / "model.int8.bin": bbytes,
    }
    note = f"{len(table.activations)} layers int8"
    report: dict[str, Any] = {}
    if compare_samples:
        # the check runs on files in a scratch folder first: nothing is written on failure
        import tempfile

        from graphkit.scratch import prefix

        with tempfile.TemporaryDirectory(prefix=prefix("ncnn-")) as tmp:
            (Path(tmp) / "m.param").write_text(ptext)
            (Path(tmp) / "m.bin").write_bytes(bbytes)
            int8 = nc.NcnnNet(
                Path(tmp) / "m.param", Path(tmp) / "m.bin", int8=True, threads=threads
            )
            net = context.net
            tops = {param.layer(name).tops[0]: name for name in table.activations}
            feeds = (s.feeds for s in islice(iter_samples(context.spec), compare_samples))
            r = compare(
                net,
                int8,
                feeds,
                net.outputs,
                list(tops),
                input_map=context.input_map,
                requantized=requantized_tops(param, table),
            )
        report = {
            "samples": r["samples"],
            "cosine": r["cosine"],
            "layer_sqnr_db": {
                tops[t]: (v if math.isfinite(v) else None) for t, v in r["sqnr_db"].items()
            },
        }
        files[d / "int8_check.json"] = json.dumps(report, indent=1)
        note += "; cosine vs fp32 on {} samples: {}".format(
            r["samples"], ", ".join(f"{k} {v:.4f}" for k, v in r["cosine"].items())
        )
    src_param, src_bin = context.param_path, context.bin_path
    out = [
        ExportedFile(
            d / "model.table",
            f"ncnn2table-format table ({context.method}, {len(table.activations)} layers)",
            f"ncnn2int8 {src_param.resolve()} {src_bin.resolve()} out.param out.bin model.table",
        ),
        ExportedFile(d / "model.int8.param", f"ncnn int8 model as ncnn2int8 writes it ({note})"),
        ExportedFile(d / "model.int8.bin", "ncnn int8 weights (tag 0x000D4B38) with scales"),
    ]
    if report:
        out.append(
            ExportedFile(
                d / "int8_check.json",
                "ncnn int8 vs fp32: output cosine and the SQNR (dB) of every quantized layer",
            )
        )
    source = context.spec.describe()
    about = (
        f"Calibration of the ncnn model `{src_param}`: method `{context.method}`, "
        f"{context.samples} samples from {source.get('images') or source.get('path')}. "
        "Written by graphkit as ncnn2table and ncnn2int8 write them."
    )
    files[d / "README.md"] = files_readme(src_param.stem, about, out, d)
    write_all(files)
    return out


__all__ = ["DEFAULT_METHOD", "NcnnCalibration", "bin_of", "calibrate_ncnn_model", "write_ncnn_int8"]
