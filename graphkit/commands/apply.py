"""`graphkit apply PIPELINE MODEL -o OUT`."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from graphkit.commands._common import add_command, console
from graphkit.model import atomic_write_text, load_model, save_model
import graphkit.pipeline as pipeline_module
from graphkit.pipeline import load_pipeline, run_pipeline


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "apply", pipeline_module)
    p.add_argument("pipeline", help="pipeline YAML: a list of passes, each optionally with options")
    p.add_argument("model", help="input ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the resulting model")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime output comparison")
    p.add_argument("--report", help="also write a JSON report of every step")
    return p


def run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    model = load_model(args.model)
    table = Table(title=f"graphkit apply {args.pipeline}", title_justify="left")
    for col in ("pass", "nodes", "time", "max |diff|", "what changed"):
        table.add_column(col)

    def on_step(r):
        diff = "not run" if r.max_abs_diff is None else max(r.max_abs_diff.values(), default=0.0)
        diff = diff if isinstance(diff, str) else f"{diff:.2e}"
        changed = "; ".join(r.notes) if r.notes else ("changed" if r.changed else "no change")
        label = r.name if r.iteration == 1 else f"{r.name} (#{r.iteration})"
        console.print(
            f"  {label:<22} {r.nodes_before:>5} -> {r.nodes_after:<5} "
            f"{r.seconds * 1000:7.0f} ms  diff {diff:<9} {changed}"
        )
        table.add_row(label, f"{r.nodes_before} -> {r.nodes_after}", f"{r.seconds:.2f}s", diff, changed)

    before = len(model.graph.node)
    with console.status("applying passes..."):
        result, reports = run_pipeline(model, pipeline, verify=not args.no_verify, on_step=on_step)
    save_model(result, args.output)
    console.print(
        f"[green]wrote {args.output}[/]: {before} -> {len(result.graph.node)} nodes, "
        f"{len(reports)} pass runs"
    )
    if args.report:
        atomic_write_text(
            args.report,
            json.dumps(
                {
                    "model": args.model,
                    "output": args.output,
                    "nodes_before": before,
                    "nodes_after": len(result.graph.node),
                    "steps": [r.as_dict() for r in reports],
                },
                indent=2,
            ),
        )
    return 0
