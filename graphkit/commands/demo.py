"""`graphkit demo`: the main job on a model built in code, no download."""

from __future__ import annotations

import argparse
import os

import graphkit.demo as demo_module
from graphkit.commands._common import (
    add_command,
    add_json_argument,
    check_output_files,
    console,
    write_json,
)
from graphkit.commands.apply import format_step
from graphkit.errors import GraphkitError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "demo")
    p.add_argument(
        "--out-dir", default="graphkit-demo", help="where to write the model, pipeline and result"
    )
    add_json_argument(p, "the paths written and every pass's report")
    return p


def run(args: argparse.Namespace) -> int:
    check_output_files([], json=args.json)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise GraphkitError(f"{args.out_dir} exists and is not a directory")
    for name in demo_module.FILES:  # all checked before the first is written
        path = os.path.join(args.out_dir, name)
        if os.path.isdir(path) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise GraphkitError(f"{path} exists and cannot be replaced by the demo's {name}")
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:
        raise GraphkitError(f"cannot create {args.out_dir}: {exc.strerror}") from None

    def on_step(r) -> None:
        for line in format_step(r):
            console.print(line, markup=False, soft_wrap=True)

    console.print("graphkit demo: a small pose-like model built in code", markup=False)
    res = demo_module.run_demo(args.out_dir, on_step=on_step)
    worst = max((max(r.max_abs_diff.values()) for r in res.reports if r.max_abs_diff), default=0.0)
    console.print(
        f"model    {res.model_path}\npipeline {res.pipeline_path}\nresult   {res.output_path}\n"
        f"{res.nodes_before} -> {res.nodes_after} nodes; every pass verified in onnxruntime "
        f"(largest output difference {worst:.2e}).\n"
        f"Same job on your model: graphkit apply {res.pipeline_path} MODEL.onnx -o OUT.onnx",
        markup=False,
        soft_wrap=True,
    )
    write_json(
        args.json,
        {
            "model": str(res.model_path),
            "pipeline": str(res.pipeline_path),
            "result": str(res.output_path),
            "nodes_before": res.nodes_before,
            "nodes_after": res.nodes_after,
            "steps": [r.as_dict() for r in res.reports],
        },
    )
    return 0
