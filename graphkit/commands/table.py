"""Inspect quantization plans (calibration tables).

Reads a plan written by `graphkit calibrate -o` (JSON, schema 1 or 2):
`graphkit table show PLAN.json`.
"""

from __future__ import annotations

import argparse
from collections import Counter

from rich.markup import escape
from rich.table import Table

from graphkit.commands._common import (
    add_command,
    add_json_argument,
    check_output_files,
    console,
    short_name,
    write_json,
)
from graphkit.quant.table import CalibrationTable, float_search, held_out_summary, recipe_record


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "table")
    tsub = p.add_subparsers(dest="table_command", metavar="ACTION", required=True)
    show = tsub.add_parser(
        "show",
        help="print a plan: thresholds, weights, float layers and the held-out figures",
        description="Print a plan readably: each activation threshold with the method that "
        "chose it, the weights and how their integers were rounded, the layers kept float "
        "and why, and the held-out measurements of `graphkit calibrate`.",
    )
    show.add_argument("table", help="graphkit calibration table (JSON)")
    show.add_argument(
        "--weights", action="store_true", help="also list every weight's channel range"
    )
    show.add_argument(
        "--wide", action="store_true", help="also show the layers reading each activation"
    )
    add_json_argument(show, "the whole plan (every field of docs/calibration.md)")
    return p


def run(args: argparse.Namespace) -> int:
    check_output_files([args.table], json=args.json)
    table = CalibrationTable.load(args.table)
    # every name and text below comes from the plan file: escaped, never read as markup
    settings = ", ".join(f"{k}={v}" for k, v in table.settings.items()) or "defaults"
    console.print(
        f"[bold]{escape(args.table)}[/]  method {escape(table.method)} ({escape(settings)}); "
        f"model {escape(table.model_path or '?')} hash {escape(table.model_hash)}; "
        f"data {escape(table.data_source or '?')}, {table.num_samples} samples"
    )
    if search := float_search(table):
        console.print(
            f"float search: kept {len(search.steps)} of at most {search.budget} layers, "
            f"tried {search.tried}"
            + (f"; stopped: {escape(search.stopped)}" if search.stopped else "")
        )
    if table.keep_float:
        console.print(f"kept float ({len(table.keep_float)}):")
        for name in table.keep_float:
            reason = table.float_reasons.get(name, "asked")
            console.print(f"  {_text(name, 60)}: {escape(reason)}")
    rounding = Counter(w.rounding or "by the backend" for w in table.weights.values())
    if table.weights:
        console.print(
            "int8 weights: "
            + ", ".join(f"{n} rounded {escape(how)}" for how, n in rounding.items())
        )
    if table.biases:
        console.print(f"bias corrected: {len(table.biases)} layer(s)")
    if table.equalization:
        console.print(
            f"equalized: {len(table.equalization)} Conv pair(s), rescaled before the plan's "
            "weights go in (every backend gets the rescaled model)"
        )
    unsigned = len(table.unsigned_activations())
    if unsigned:
        console.print(
            f"unsigned activations: {unsigned} of {len(table.activations)} (uint8 in "
            "onnxruntime's Q/DQ, int8 in the other backends)"
        )
    summary = held_out_summary(table)
    if summary:
        methods = recipe_record(table).methods
        console.print(
            escape(summary)
            + "; methods tried: "
            + ", ".join(f"{escape(m)} {v.mean} dB" for m, v in methods.items())
        )
    acts = Table(title="activations")
    acts.add_column("activation", no_wrap=True, min_width=36)
    for col in ("amax", "scale", "min", "max", "clipped", "method"):
        acts.add_column(col, justify="right", no_wrap=True, min_width=max(len(col), 8))
    if args.wide:
        acts.add_column("consumers", overflow="fold")
    for name, e in table.activations.items():
        observed = max(abs(e.min or 0.0), abs(e.max or 0.0))
        clipped = f"{100 * (1 - e.amax / observed):.1f}%" if observed > e.amax else "-"
        row = [
            _text(name, 36),
            f"{e.amax:.6g}",
            # the step the plan was measured with: a uint8 entry's (amax / 255) is also the
            # step of its shifted int8 in the signed-only backends
            f"{(e.unsigned_scale if e.unsigned else e.scale):.6g}",
            _num(e.min),
            _num(e.max),
            clipped,
            escape(e.method or table.method) + (" uint8" if e.unsigned else ""),
        ]
        if args.wide:
            row.append(
                ", ".join(f"{escape(c[0])} {_text(c[-1], 28)}" for c in e.consumers if c) or "-"
            )
        acts.add_row(*row)
    console.print(acts)
    weights = Table(title="weights", title_justify="left")
    weights.add_column("weight", overflow="fold", ratio=3)
    weights.add_column("layer", overflow="fold", ratio=2)
    for col in ("axis", "channels", "amax min", "amax max"):
        weights.add_column(col, justify="right", no_wrap=True)
    for name, w in table.weights.items():
        weights.add_row(
            _text(name),
            f"{escape(w.op_type)} {_text(w.node, 32)}",
            str(w.axis) if w.axis >= 0 else "tensor",
            str(len(w.amax)),
            f"{min(w.amax):.4g}" if w.amax else "-",
            f"{max(w.amax):.4g}" if w.amax else "-",
        )
        if args.weights:
            weights.add_row(
                "  per channel: " + (" ".join(f"{a:.4g}" for a in w.amax) or "-"),
                "",
                "",
                "",
                "",
                "",
            )
    console.print(weights)
    write_json(args.json, table.to_dict())
    return 0


def _text(name: str, width: int = 48) -> str:
    """A name from the plan, shortened and escaped for rich markup."""
    return escape(short_name(name, width))


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"
