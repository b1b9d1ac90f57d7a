"""`graphkit calibrate MODEL --data SPEC -o TABLE.json [--qdq OUT.onnx]`."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

import graphkit.quant.calibrate as calibrate_module
from graphkit.commands._common import add_command, console, progress_bar
from graphkit.commands.export import add_export_arguments, export_from_args
from graphkit.errors import GraphkitError
from graphkit.model import load_model, save_model
from graphkit.quant.calibrate import calibrate
from graphkit.quant.calibrators import ALIASES, CALIBRATORS, canonical_method
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.table import CalibrationTable
from graphkit.runtime.ort import make_session


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "calibrate", calibrate_module)
    p.add_argument("model", help="ONNX model to calibrate")
    p.add_argument("--data", required=True, help="input spec YAML (see examples/models/)")
    p.add_argument(
        "--method",
        default="mse",
        choices=sorted([*CALIBRATORS, *ALIASES]),
        help="activation calibrator (default: mse; entropy = entropy-trt, kl = kl-ncnn)",
    )
    p.add_argument("-o", "--output", required=True, help="where to write the JSON table")
    p.add_argument("--qdq", help="also write a Q/DQ ONNX model (int8, runs in onnxruntime)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the data (default 1)")
    p.add_argument(
        "--keep-float", nargs="+", default=[], metavar="NODE", help="nodes left in float"
    )
    p.add_argument("--limit", type=int, help="use only the first N samples of the spec")
    p.add_argument(
        "--percentile", type=float, help="percentile method: the kept %% of |x| (default 99.99)"
    )
    p.add_argument(
        "--tensors",
        default="quantizable",
        choices=["quantizable", "all"],
        help="observe the inputs of quantized layers (default) or every float tensor",
    )
    p.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per layer")
    p.add_argument(
        "--bins", type=int, default=2048, help="histogram bins (power of two, default 2048)"
    )
    p.add_argument(
        "--max-outputs-per-run",
        type=int,
        help="observe at most N tensors per pass over the data (less memory, more passes)",
    )
    p.add_argument(
        "--auto-keep-float",
        type=int,
        metavar="N",
        help="keep float the N layers whose int8 error hurts the outputs most (sensitivity)",
    )
    p.add_argument(
        "--auto-keep-float-db",
        type=float,
        metavar="DB",
        help="keep float as few sensitive layers as reach this output SQNR (dB)",
    )
    p.add_argument(
        "--sensitivity-samples",
        type=int,
        default=8,
        metavar="K",
        help="samples scored by the sensitivity analysis (default 8)",
    )
    p.add_argument(
        "--round-weights",
        action="store_true",
        help="round the --qdq model's int8 weights against each layer's output error",
    )
    p.add_argument(
        "--weight-samples",
        type=int,
        default=8,
        metavar="K",
        help="samples fitting --round-weights (default 8)",
    )
    p.add_argument(
        "--bias-correction",
        action="store_true",
        help="correct the --qdq model's Conv biases for the int8 mean shift "
        "(measured on the --weight-samples samples)",
    )
    add_export_arguments(p)
    return p


def auto_keep_float(
    args: argparse.Namespace,
    table: CalibrationTable,
    model: onnx.ModelProto,
    base: onnx.ModelProto | None = None,
) -> CalibrationTable:
    """Apply --auto-keep-float / --auto-keep-float-db: rank layers, keep the worst float."""
    from graphkit.quant.sensitivity import auto_keep_float as choose

    if args.auto_keep_float is None and args.auto_keep_float_db is None:
        return table
    with console.status("sensitivity analysis (one layer int8 at a time)"):
        table, choice = choose(
            model,
            args.data,
            table,
            count=args.auto_keep_float,
            target_db=args.auto_keep_float_db,
            samples=args.sensitivity_samples,
            skip=args.weight_samples if base is not None else 0,
            keep_float=args.keep_float,
            base=base,
        )
    console.print(
        f"kept float {len(choice.keep_float)} layer(s): output SQNR "
        f"{choice.baseline_db:.1f} -> {choice.sqnr_db:.1f} dB"
        + "".join(f"\n  {n}" for n in choice.keep_float)
    )
    return table


def export(args: argparse.Namespace, table: CalibrationTable, model: onnx.ModelProto) -> None:
    """Write the backend files asked for with --target/--out-dir (before the table is saved)."""
    if getattr(args, "target", None) or getattr(args, "out_dir", None):
        export_from_args(args, table, model, Path(args.model).stem)


def check_auto_keep_float(args: argparse.Namespace) -> None:
    if args.auto_keep_float is not None and args.auto_keep_float_db is not None:
        raise GraphkitError("give --auto-keep-float or --auto-keep-float-db, not both")
    if args.auto_keep_float is not None and args.auto_keep_float < 1:
        raise GraphkitError(f"--auto-keep-float must be at least 1, got {args.auto_keep_float}")
    if args.sensitivity_samples < 1:
        raise GraphkitError(
            f"--sensitivity-samples must be at least 1, got {args.sensitivity_samples}"
        )
    if args.round_weights and not args.qdq:
        raise GraphkitError(
            "--round-weights changes the int8 weights of the --qdq model; add --qdq"
        )
    if args.bias_correction and not args.qdq:
        raise GraphkitError("--bias-correction changes the biases of the --qdq model; add --qdq")
    if args.weight_samples < 1:
        raise GraphkitError(f"--weight-samples must be at least 1, got {args.weight_samples}")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise GraphkitError(f"--workers must be at least 1, got {args.workers}")
    if args.bins < 8 or args.bins & (args.bins - 1):
        raise GraphkitError(f"--bins must be a power of two of at least 8, got {args.bins}")
    settings = {}
    if args.percentile is not None:
        if canonical_method(args.method) != "percentile":
            raise GraphkitError("--percentile only applies to --method percentile")
        settings["percentile"] = args.percentile
    check_auto_keep_float(args)
    model = load_model(args.model)
    with progress_bar("calibrating", "samples") as progress:
        task = progress.add_task("calibrate", total=None)
        table = calibrate(
            model,
            args.data,
            method=args.method,
            settings=settings,
            workers=args.workers,
            limit=args.limit,
            tensors=args.tensors,
            keep_float=args.keep_float,
            per_channel=not args.per_tensor_weights,
            bins=args.bins,
            max_outputs_per_run=args.max_outputs_per_run,
            on_sample=lambda: progress.advance(task),
            on_total=lambda n: progress.update(task, total=n),
        )
    table.model_path = args.model
    rounded = None
    if args.round_weights:
        from graphkit.quant.refine import restore_weights, round_weights

        with console.status("rounding weights against the layer outputs"):
            rounded = round_weights(model, args.data, table, samples=args.weight_samples)
    table = auto_keep_float(args, table, model, base=rounded)
    qdq = None
    if args.qdq:
        source = model if rounded is None else restore_weights(rounded, model, table.keep_float)
        qdq = insert_qdq(source, table, keep_float=args.keep_float)
        make_session(qdq)  # refuse to write a model onnxruntime cannot load
        if args.bias_correction:
            from graphkit.quant.bias import bias_correct_spec

            with console.status("correcting Conv biases for the int8 mean shift"):
                qdq, done = bias_correct_spec(model, qdq, args.data, samples=args.weight_samples)
            console.print(
                f"bias correction: {len(done.nodes)} Conv(s), mean |shift| "
                f"{done.mean_abs_shift[0] if done.mean_abs_shift else 0:.4g}"
            )
    export(args, table, model)
    table.save(args.output)
    if qdq is not None:
        save_model(qdq, args.qdq)
    console.print(
        f"[green]wrote {args.output}[/]: {table.method}, {len(table.activations)} activations, "
        f"{len(table.weights)} weights, {table.num_samples} samples"
        + (f"; Q/DQ model {args.qdq}" if args.qdq else "")
    )
    return 0
