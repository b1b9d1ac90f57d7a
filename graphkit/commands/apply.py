"""`graphkit apply PIPELINE MODEL -o OUT`."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from graphkit import scratch
from graphkit.commands._common import (
    add_command,
    add_json_argument,
    check_output_files,
    console,
    non_negative_int,
    write_json,
)
from graphkit.errors import GraphkitError
from graphkit.model import atomic_write_text, load_model, save_model
from graphkit.pipeline import StepReport, load_pipeline, run_pipeline
from graphkit.runtime.ort import runnable_shapes


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "apply")
    p.add_argument("pipeline", help="pipeline YAML: a list of passes, each optionally with options")
    p.add_argument("model", help="input ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the resulting model")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime output comparison"
    )
    p.add_argument("--report", help="also write a JSON report of every step (as --json)")
    add_json_argument(p, "the report of every step")
    p.add_argument(
        "--verify-shape",
        action="append",
        default=[],
        metavar="[INPUT:]DIMS",
        help="input shape for the verification runs, e.g. 1x3x512x512 (one input) or "
        "image:1x3x512x512; repeat per input (default: fixed dims as they are, batch 1, "
        "other free dims the first of 1, 64, 128, 256, 512 the model runs at)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the random sample inputs"
    )
    return p


def _check_writable(path: str, what: str) -> None:
    """Fail before any work when the result could not be written (probes with a real file)."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    if not parent.is_dir():
        raise GraphkitError(f"{what} directory {parent} does not exist")
    if Path(path).is_dir():
        raise GraphkitError(f"{what} path {path} is a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=scratch.prefix("probe-"), dir=parent)
    except OSError:
        raise GraphkitError(f"{what} directory {parent} is not writable") from None
    os.close(fd)
    os.unlink(probe)


def parse_shapes(values: list[str], model) -> dict[str, list[int]]:
    """`--verify-shape` values ([INPUT:]AxBxC) as {input: dims}."""
    from graphkit.runtime.ort import graph_input_names

    inputs = graph_input_names(model)
    out: dict[str, list[int]] = {}
    for value in values:
        name, _, dims = value.rpartition(":")
        if not name:
            if len(inputs) != 1:
                raise GraphkitError(
                    f"--verify-shape {value}: the model has {len(inputs)} inputs; "
                    "name one (INPUT:AxBxC)"
                )
            name = inputs[0]
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise GraphkitError(f"--verify-shape {value}: expected dims like 1x3x512x512") from None
        if not shape or any(d < 1 for d in shape):
            raise GraphkitError(f"--verify-shape {value}: every dim must be at least 1")
        out[name] = shape
    return out


def format_step(r: StepReport) -> list[str]:
    """The lines `apply` prints for one pass run."""
    label = r.name if r.iteration == 1 else f"{r.name} (round {r.iteration})"
    if r.max_abs_diff is None:
        verdict = "not compared" if r.changed else "no change"
    else:
        worst = max(r.max_abs_diff.values(), default=0.0)
        verdict = f"verified, max |diff| {worst:.2e}"
    lines = [
        f"  {label:<24} {r.nodes_before:>5} -> {r.nodes_after:<5} {r.seconds * 1000:7.0f} ms  {verdict}"
    ]
    lines += [f"      {note}" for note in r.notes]
    if r.ops_removed:
        ops = ", ".join(f"{v} {k}" for k, v in sorted(r.ops_removed.items(), key=lambda kv: -kv[1]))
        lines.append(f"      ops removed: {ops}")
    if r.ops_added:
        ops = ", ".join(f"{v} {k}" for k, v in sorted(r.ops_added.items(), key=lambda kv: -kv[1]))
        lines.append(f"      ops added: {ops}")
    if r.max_abs_diff and len(r.max_abs_diff) > 1:
        per = ", ".join(f"{k}: {v:.2e}" for k, v in r.max_abs_diff.items())
        lines.append(f"      per output: {per}")
    return lines


def run(args: argparse.Namespace) -> int:
    # never replace an input: a failed or surprising clean would leave nothing to go back to
    check_output_files(
        [args.model, args.pipeline], output=args.output, report=args.report, json=args.json
    )
    _check_writable(args.output, "output")
    if args.report:
        _check_writable(args.report, "report")
    pipeline = load_pipeline(args.pipeline)
    # weights stay on disk until a pass reads them: a 2 GB model is not held twice
    model = load_model(args.model, lazy=True)
    verify = not args.no_verify

    def on_step(r: StepReport) -> None:
        for line in format_step(r):
            console.print(line, markup=False, soft_wrap=True)

    before = len(model.graph.node)
    start = time.perf_counter()
    console.print(
        f"graphkit apply {args.pipeline} to {args.model} ({before} nodes)",
        markup=False,
        soft_wrap=True,
    )
    shapes = None
    if verify:
        shapes, how = runnable_shapes(model, parse_shapes(args.verify_shape, model))
        console.print(f"verifying on random inputs: {how}", markup=False, soft_wrap=True)
    result, reports = run_pipeline(
        model, pipeline, verify=verify, on_step=on_step, seed=args.seed, verify_shapes=shapes
    )
    total = time.perf_counter() - start
    save_model(result, args.output)
    worst = max(
        (max(r.max_abs_diff.values(), default=0.0) for r in reports if r.max_abs_diff),
        default=None,
    )
    check = "not verified" if not verify else f"max |diff| of any pass {worst or 0.0:.2e}"
    console.print(
        f"wrote {args.output}: {before} -> {len(result.graph.node)} nodes, "
        f"{len(reports)} pass runs in {total:.2f}s, {check}",
        markup=False,
        soft_wrap=True,
    )
    doc = {
        "pipeline": args.pipeline,
        "model": args.model,
        "output": args.output,
        "verified": verify,
        "nodes_before": before,
        "nodes_after": len(result.graph.node),
        "seconds": total,
        "steps": [r.as_dict() for r in reports],
    }
    try:
        if args.report:
            atomic_write_text(args.report, json.dumps(doc, indent=2))
        write_json(args.json, doc)
    except GraphkitError:
        Path(args.output).unlink(missing_ok=True)
        raise
    return 0
