"""`graphkit export TABLE MODEL --target ncnn,tensorrt,atc,vacc,onnx --out-dir DIR`."""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import graphkit.backends as exporters_module
from graphkit.backends.tensorrt.exporter import ALGORITHMS as TRT_ALGORITHMS
from graphkit.commands._common import (
    add_command,
    add_json_argument,
    check_output_files,
    console,
    positive_int,
    spec_inputs,
    timed_log,
    write_json,
)
from graphkit.errors import GraphkitError
from graphkit.model import load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "export")
    p.add_argument(
        "table", help="graphkit calibration table (JSON) or a TensorRT calibration cache"
    )
    p.add_argument("model", help="the float ONNX model the table was made for")
    add_export_arguments(p, required=True)
    add_json_argument(p, "the files written, what each is and the command that uses it")
    return p


def add_export_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The export options, shared with `graphkit calibrate --target ... --out-dir ...`."""
    p.add_argument(
        "--target",
        required=required,
        help="comma-separated: ncnn, tensorrt, atc, vacc, onnx (or all); calibrate measures "
        "the plan as they run it (signed activations for all but onnx; float the layers "
        "one of them cannot run int8, e.g. ncnn's ConvTranspose)",
    )
    p.add_argument(
        "--out-dir", required=required, help="directory for the backend files and README.md"
    )
    if not any(a.dest == "data" for a in p._actions):
        p.add_argument(
            "--data",
            help="input spec YAML: calibrates the converted ncnn model, writes the vacc .npz "
            "set and gives ATC gears their aspect ratios",
        )
    if not any(a.dest == "keep_float" for a in p._actions):
        p.add_argument(
            "--keep-float", nargs="+", default=[], metavar="NODE", help="layers kept in float"
        )
    p.add_argument("--trt-version", default="10.13.0", help="TensorRT version of the cache header")
    p.add_argument(
        "--trt-algorithm",
        choices=TRT_ALGORITHMS,
        help="calibrator named in the cache header (default: the one closest to the plan's "
        "method; seed-style IInt8EntropyCalibrator caches say EntropyCalibration)",
    )
    p.add_argument(
        "--export-limit",
        type=positive_int,
        help="samples used by the ncnn calibration, the vacc set and ATC gears (default: "
        "the samples the plan is calibrated on: all of --data, or calibrate's --limit; "
        "the vacc set keeps at most 200)",
    )
    p.add_argument(
        "--ncnn-winograd-6bit",
        action="store_true",
        help="ncnn2table's 31/absmax weights for 3x3 s1 convs (default: the plan's 8-bit "
        "integers, which ncnn runs exactly)",
    )
    p.add_argument(
        "--ncnn-float-gemm",
        action="store_true",
        help="keep pnnx's Gemm layers (token Linears of transformers, SimCC classifiers) "
        "as float Gemm instead of int8 InnerProduct (ncnn's x86 int8 InnerProduct on token "
        "rows is slower than its fp32 Gemm: docs/exporters.md)",
    )
    p.add_argument(
        "--ncnn-recalibrate",
        action="store_true",
        help="calibrate every ncnn layer on the converted model with --data instead of "
        "taking the plan's thresholds (only layers without an ONNX twin need it)",
    )
    p.add_argument(
        "--gears", type=positive_int, default=8, help="ATC gear count for variable-size inputs"
    )
    p.add_argument(
        "--gear-short-side",
        type=positive_int,
        help="ATC gears: the short side images are resized to when the model fixes neither "
        "H nor W (default 512, mmpose's bottom-up setting); a fixed side is used as is",
    )


def export_from_args(args: argparse.Namespace, table, model, model_name: str = "model") -> list:
    """Run export_all with the parsed options (used by export and calibrate)."""
    if not args.target or not args.out_dir:
        raise GraphkitError("exporting needs both --target and --out-dir")
    samples = None
    sizes = None
    spec_arg = getattr(args, "data", None)
    if spec_arg:
        from graphkit.data import iter_samples, load_input_spec
        from graphkit.data.check import check_against_model

        spec = load_input_spec(spec_arg) if isinstance(spec_arg, (str, Path)) else spec_arg
        check_against_model(spec, model)  # before any file is written
        # the same samples as the JSON table unless asked otherwise
        limit = args.export_limit or getattr(args, "limit", None)

        def samples():
            return (s.feeds for s in itertools.islice(iter_samples(spec), limit))

        sizes = image_sizes(spec, limit)
    return exporters_module.export_all(
        table,
        model,
        args.target,
        args.out_dir,
        keep_float=args.keep_float,
        samples=samples,
        image_sizes=sizes,
        trt_version=args.trt_version,
        algorithm=args.trt_algorithm,
        winograd_6bit=args.ncnn_winograd_6bit,
        recalibrate=args.ncnn_recalibrate,
        int8_gemm=not args.ncnn_float_gemm,
        gear_count=args.gears,
        gear_short_side=args.gear_short_side,
        threads=max(1, os.cpu_count() or 1),
        model_name=model_name,
        log=timed_log(),
    )


def image_sizes(spec, limit: int | None) -> list[tuple[int, int]]:
    """(h, w) of the spec's images, read from file headers only."""
    from PIL import Image

    from graphkit.data.sources import select_items

    out = []
    for item in itertools.islice(select_items(spec), limit):
        try:
            with Image.open(item.path) as im:
                out.append((im.height, im.width))
        except (OSError, ValueError):
            continue
    return out


def run(args: argparse.Namespace) -> int:
    check_output_files(
        [args.model, args.table, *spec_inputs(getattr(args, "data", None))], json=args.json
    )
    model = load_model(args.model)
    table = exporters_module.load_table(args.table, model)
    files = export_from_args(args, table, model, Path(args.model).stem)
    for f in files:
        console.print(f"  {f.path}  [dim]{f.what}[/]")
    console.print(f"[green]wrote {len(files)} files and README.md to {args.out_dir}[/]")
    write_json(args.json, files_doc(files))
    return 0


def files_doc(files) -> list[dict]:
    """Exported files as data (for --json)."""
    return [{"path": str(f.path), "what": f.what, "command": f.command or None} for f in files]
