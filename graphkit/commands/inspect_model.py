"""`graphkit inspect MODEL [--json FILE]`."""

from __future__ import annotations

import argparse

from rich.table import Table

from graphkit.commands._common import (
    add_command,
    add_json_argument,
    check_output_files,
    console,
    write_json,
)
from graphkit.inspect import summarize
from graphkit.model import load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "inspect")
    p.add_argument("model", help="ONNX model (external weights are not read)")
    add_json_argument(p, "the summary")
    return p


def run(args: argparse.Namespace) -> int:
    check_output_files([args.model], json=args.json)
    # the summary needs shapes only: a model's external weights (GBs) stay on disk
    info = summarize(load_model(args.model, load_external_data=False))
    console.print(
        f"[bold]{args.model}[/]  opset {info['opset']}, IR {info['ir_version']}, "
        f"{info['nodes']} nodes, {info['parameters']:,} parameters"
    )
    t = Table("kind", "name", "dtype", "shape")
    for kind in ("inputs", "outputs"):
        for name, dtype, shape in info[kind]:
            t.add_row(kind[:-1], name, dtype, str(shape))
    console.print(t)
    h = Table("op", "count")
    for op, n in sorted(info["ops"].items(), key=lambda kv: -kv[1]):
        h.add_row(op, str(n))
    console.print(h)
    write_json(args.json, info)
    return 0
