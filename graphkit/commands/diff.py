"""`graphkit diff REF QUANT --data SPEC.yaml`."""

from __future__ import annotations

import argparse

from rich import box
from rich.console import JustifyMethod
from rich.table import Table

from graphkit.commands._common import (
    add_command,
    add_executor_arguments,
    add_json_argument,
    check_output_files,
    console,
    positive_int,
    progress_bar,
    short_name,
    spec_inputs,
    write_json,
)
from graphkit.errors import GraphkitError
from graphkit.evaluators.diff import run_diff
from graphkit.metrics import finite_or_none
from graphkit.model import atomic_write_text


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "diff")
    p.add_argument("ref", help="reference model: FP32 ONNX or ncnn .param")
    p.add_argument("quant", help="quantized model: Q/DQ ONNX or ncnn int8 .param")
    p.add_argument("--data", required=True, help="input spec YAML giving the real inputs")
    p.add_argument("--limit", type=positive_int, help="use only the first N samples")
    p.add_argument("--html", help="write a self-contained HTML report here")
    add_json_argument(p, "every figure")
    p.add_argument("--table", help="graphkit calibration table: mark its thresholds on histograms")
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="also quantize one layer at a time (others float) and measure each one's error",
    )
    p.add_argument(
        "--per-layer-samples",
        type=positive_int,
        default=8,
        help="samples for the own-error table and --per-layer (default: %(default)s)",
    )
    add_executor_arguments(p)
    p.add_argument(
        "--no-own",
        action="store_true",
        help="skip the table of each layer's own error (layer run alone on FP32 inputs)",
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=25,
        help="rows in each terminal table, worst first (default: %(default)s)",
    )
    p.add_argument(
        "--max-outputs-per-run",
        "--max-tensors-per-run",
        dest="max_tensors_per_run",
        type=positive_int,
        metavar="N",
        help="compare at most N tensors per pass over the data (less memory, one run per "
        "group; the same option as calibrate's)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    check_output_files(
        [args.ref, args.quant, args.table, *spec_inputs(args.data)], json=args.json, html=args.html
    )
    if args.limit is not None and args.limit < 1:
        raise GraphkitError("--limit must be at least 1")
    if args.max_tensors_per_run is not None and args.max_tensors_per_run < 1:
        raise GraphkitError("--max-outputs-per-run must be at least 1")
    with progress_bar() as bar:
        from graphkit.data import count_samples, load_input_spec

        spec = load_input_spec(args.data)
        if args.limit is not None:
            spec = spec.with_source(limit=args.limit)
        samples = bar.add_task("comparing", total=count_samples(spec))
        layers = bar.add_task("per-layer", total=None, visible=False)

        def on_layer(_name: str) -> None:
            bar.update(layers, visible=True, advance=1)

        def on_pass(i: int, k: int) -> None:
            if k > 1:
                bar.reset(samples, description=f"comparing, pass {i + 1}/{k}")

        report = run_diff(
            args.ref,
            args.quant,
            spec,
            per_layer=args.per_layer,
            per_layer_samples=args.per_layer_samples,
            own=not args.no_own,
            histograms=bool(args.html),
            table=args.table,
            on_sample=lambda: bar.advance(samples),
            on_layer=on_layer,
            on_layer_total=lambda n: bar.update(layers, total=n),
            max_tensors_per_run=args.max_tensors_per_run,
            on_pass=on_pass,
            executor=args.executor,
            ray_address=args.ray_address,
        )
    data = report.to_dict()
    t = Table(
        title=f"per-tensor diff over {report.samples} samples (worst first)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    t.add_column("tensor", no_wrap=True)
    columns: list[tuple[str, JustifyMethod]] = [
        ("op", "left"),
        ("int8", "left"),
        ("SQNR dB", "right"),
        ("cosine", "right"),
        ("max |err|", "right"),
    ]
    for col, just in columns:
        t.add_column(col, justify=just, no_wrap=True, min_width=max(len(col), 8))
    rows = report.worst_first()
    for r in rows[: args.top]:
        sq = finite_or_none(r.diff.sqnr_db)
        t.add_row(
            short_name(r.name) + (" [output]" if r.is_output else ""),
            r.op_type,
            "yes" if r.quantized else "no",
            "exact" if sq is None else f"{sq:.2f}",
            f"{r.diff.cosine:.5f}",
            f"{r.diff.max_abs_err:.4g}",
        )
    console.print(t)
    if len(rows) > args.top:
        console.print(f"... {len(rows) - args.top} more tensors (see --json / --html)")
    s = data["summary"]
    med = "n/a" if s["median_sqnr_db"] is None else f"{s['median_sqnr_db']:.2f} dB"
    console.print(
        f"{s['tensors']} tensors, {s['quantized_layers']} quantized layers, median SQNR {med}"
    )
    for name, m in s["outputs"].items():
        out_sq = "exact" if m["sqnr_db"] is None else f"{m['sqnr_db']:.2f} dB"
        console.print(f"output {name}: SQNR {out_sq}, cosine {m['cosine']:.5f}")
    if report.own:
        from graphkit.evaluators.own_error import worst_own_first

        ow = Table(
            title="each quantized layer's own error: run alone on the FP32 inputs (worst first)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        ow.add_column("layer", no_wrap=True)
        for col in ("op", "own SQNR dB", "cosine", "max |err|"):
            ow.add_column(col, justify="right", no_wrap=True, min_width=max(len(col), 8))
        for own in worst_own_first(report.own)[: args.top]:
            if "skipped" in own:
                ow.add_row(short_name(own["node"]), own["op_type"], "-", "-", own["skipped"][:40])
                continue
            own_sq, cos = own["sqnr_db"], own["cosine"]
            ow.add_row(
                short_name(own["node"]),
                own["op_type"],
                "exact" if own_sq is None else f"{own_sq:.2f}",
                "-" if cos is None else f"{cos:.5f}",
                "-" if own["max_abs_err"] is None else f"{own['max_abs_err']:.4g}",
            )
        console.print(ow)
    if report.per_layer:
        pl = Table(
            title="each layer quantized alone (worst first)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        pl.add_column("layer", no_wrap=True)
        for col in ("op", "output SQNR dB", "own SQNR dB"):
            pl.add_column(col, no_wrap=True, min_width=max(len(col), 8))
        from graphkit.evaluators.per_layer import sensitivity_order

        for lay in sensitivity_order(report.per_layer)[: args.top]:
            pl.add_row(
                short_name(lay["node"]),
                lay["op_type"],
                "exact" if lay["output_sqnr_db"] is None else f"{lay['output_sqnr_db']:.2f}",
                "-" if lay["layer_sqnr_db"] is None else f"{lay['layer_sqnr_db']:.2f}",
            )
        console.print(pl)
    for note in report.notes:
        console.print(f"note: {note}")
    write_json(args.json, data)
    if args.html:
        from graphkit.evaluators.report_html import render_html

        atomic_write_text(args.html, render_html(data))
        console.print(f"wrote {args.html}")
    return 0
