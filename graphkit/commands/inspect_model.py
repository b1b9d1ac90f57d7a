"""`graphkit inspect MODEL`."""

from __future__ import annotations

import argparse

from rich.table import Table

from graphkit.commands._common import console
from graphkit.inspect import summarize
from graphkit.model import load_model


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="inputs, outputs, shapes, op histogram and parameter count of a model"
    )
    p.add_argument("model", help="ONNX model")
    return p


def run(args: argparse.Namespace) -> int:
    info = summarize(load_model(args.model))
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
    return 0
