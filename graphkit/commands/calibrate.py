"""`graphkit calibrate MODEL --data SPEC -o PLAN.json [--qdq OUT.onnx] [--target ... --out-dir D]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import TaskID

from graphkit.commands._common import (
    add_command,
    add_executor_arguments,
    add_json_argument,
    check_output_files,
    console,
    non_negative_int,
    positive_int,
    progress_bar,
    spec_inputs,
    write_json,
)
from graphkit.commands.export import add_export_arguments, export_from_args
from graphkit.errors import GraphkitError
from graphkit.model import load_model, save_model
from graphkit.quant.calibrators import ALIASES, CALIBRATORS, canonical_method
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.quantize import BUDGET_SPENT, RECIPES, held_out_summary, quantize, recipe_of
from graphkit.quant.table import float_search
from graphkit.quant.targets import int8_only, runs_uint8
from graphkit.runtime.int8_kernels import uint8_conv_exact
from graphkit.runtime.ort import make_session

EXIT_TARGET_MISSED = 3


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "calibrate")
    p.add_argument(
        "model",
        help="ONNX model to calibrate, or an ncnn model.param (beside model.bin): then "
        "the table and int8 model are written into --out-dir as ncnn2table/ncnn2int8 do",
    )
    p.add_argument("--data", required=True, help="input spec YAML (see examples/models/)")
    p.add_argument(
        "-o", "--output", help="where to write the plan (JSON table; needs -o, --qdq or --out-dir)"
    )
    p.add_argument("--qdq", help="also write a Q/DQ ONNX model (int8, runs in onnxruntime)")
    add_json_argument(p, "what was decided and written (the plan's summary, the files)")
    p.add_argument(
        "--recipe",
        default="default",
        choices=sorted(RECIPES),
        help="default: every choice measured on held-out crops (module doc); plain: one "
        "method, nearest rounding, every layer int8 (default: %(default)s)",
    )
    p.add_argument(
        "--method",
        choices=sorted([*CALIBRATORS, *ALIASES]),
        help="use this activation calibrator only (default: the recipe's measured choice "
        f"among {', '.join(RECIPES['default'].methods)}; entropy = entropy-trt, kl = kl-ncnn)",
    )
    p.add_argument(
        "--max-float",
        metavar="PCT",
        help="at most this share of the weighted layers kept float, e.g. 10%% (default 10%%; "
        "0 keeps every layer int8)",
    )
    p.add_argument(
        "--target-agreement",
        type=float,
        metavar="A",
        help="stop keeping layers float once the held-out agreement (mean OKS with FP32) "
        "reaches A (default 0.98)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help=f"exit {EXIT_TARGET_MISSED} when the target agreement is not reached within the budget",
    )
    p.add_argument(
        "--round-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="round Conv weights against each layer's output, kept if it helps (default on)",
    )
    p.add_argument(
        "--bias-correction",
        nargs="?",
        const="on",
        choices=["auto", "on", "off"],
        help="correct int8 Conv biases for the mean shift: auto (kept if it helps, the "
        "default), on, off",
    )
    p.add_argument(
        "--unsigned",
        nargs="?",
        const="on",
        choices=["auto", "on", "off"],
        help="store activations that cannot be negative (by the graph, and never on the "
        "data) as uint8 over [0, amax] (one more bit; onnxruntime's Q/DQ stores uint8, "
        "ncnn / TensorRT / Ascend / vacc get the grid shifted onto int8): "
        "auto (the default: uint8 where onnxruntime runs it exactly, signed on x86 with "
        "AVX2 and no VNNI, whose onnxruntime saturates uint8 sums, unless every --target "
        "stores int8 and gets them shifted; GRAPHKIT_INT8_KERNELS=exact|saturating "
        "overrides the probe), on, off",
    )
    p.add_argument(
        "--equalize",
        action="store_true",
        default=None,
        help="equalize Conv pairs with a Relu or nothing between first (cross-layer "
        "equalization, channel ranges from every calibration crop; the plan records the "
        "scales and every backend gets the rescaled model). Off by default: measured, it "
        "helped one shared model of three (docs/accuracy.md)",
    )
    p.add_argument(
        "--fit-samples",
        "--weight-samples",
        type=positive_int,
        metavar="K",
        help="samples fitting weight rounding and bias correction (default 8)",
    )
    p.add_argument(
        "--score-samples",
        "--sensitivity-samples",
        type=positive_int,
        metavar="K",
        help="samples after them on which every choice is measured (default 8)",
    )
    p.add_argument(
        "--rank-samples",
        type=positive_int,
        metavar="K",
        help="of the scored samples, the first K rank the layers for float fallback "
        "(default: all; fewer is faster, and may miss a layer)",
    )
    p.add_argument(
        "--screen-samples",
        type=non_negative_int,
        metavar="K",
        help="rank every layer on K scored samples first, then the 2 x budget most "
        "sensitive on all of them (default 2; 0: every layer on all samples)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes sharing the data (default 1; with --executor ray: shards)",
    )
    add_executor_arguments(p)
    p.add_argument(
        "--keep-float", nargs="+", default=[], metavar="NODE", help="nodes left in float"
    )
    p.add_argument("--limit", type=positive_int, help="use only the first N samples of the spec")
    p.add_argument(
        "--percentile", type=float, help="percentile method: the kept %% of |x| (default 99.99)"
    )
    p.add_argument(
        "--tensors",
        choices=["quantizable", "all"],
        help="observe the inputs of quantized layers or every float tensor (default: all "
        "when --target includes tensorrt, whose implicit int8 needs a scale for every "
        "tensor, else quantizable)",
    )
    p.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per layer")
    p.add_argument(
        "--bins",
        type=histogram_bins,
        default=2048,
        help="histogram bins: a power of two from 8 to 65536 (default 2048)",
    )
    p.add_argument(
        "--max-outputs-per-run",
        type=positive_int,
        help="observe at most N tensors per pass over the data (less memory, more passes)",
    )
    add_export_arguments(p)
    return p


def default_tensors(args: argparse.Namespace) -> str:
    """Every float tensor when a TensorRT cache is written (implicit int8 runs a layer
    without a cache entry in float), else only the inputs of quantized layers."""
    if getattr(args, "target", None):
        from graphkit.backends import parse_targets

        if "tensorrt" in parse_targets(args.target):
            return "all"
    return "quantizable"


def float_types(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The layer types every --target can keep float (None: any), so the float search
    chooses only layers each backend can skip."""
    from graphkit.backends import float_op_types

    targets = targets_of(args)
    return None if targets is None else float_op_types(targets)


def targets_of(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The --target backends, so the plan keeps float what one of them cannot run int8."""
    if not getattr(args, "target", None):
        return None
    from graphkit.backends import parse_targets

    return tuple(parse_targets(args.target))


def parse_share(text: str | None) -> float | None:
    """'10%' or '10' -> 0.10 (a share of the weighted layers)."""
    if text is None:
        return None
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise GraphkitError(f"--max-float takes a percentage such as 10%, not '{text}'") from None
    if not 0 <= value <= 100:
        raise GraphkitError(f"--max-float must be between 0% and 100%, got {text}")
    return value / 100


def histogram_bins(text: str) -> int:
    """argparse type of --bins: a power of two from 8 to 65536 (one histogram per tensor
    holds that many counts; more only costs memory)."""
    value = positive_int(text)
    if value < 8 or value > 65536 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two from 8 to 65536, got {value}")
    return value


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would overwrite the model or cannot be written."""
    if not (args.output or args.qdq or args.out_dir):
        raise GraphkitError("nothing to write: give -o PLAN.json, --qdq OUT.onnx or --out-dir")
    check_output_files(
        [args.model, *spec_inputs(args.data)], output=args.output, qdq=args.qdq, json=args.json
    )
    if bool(getattr(args, "target", None)) != bool(args.out_dir):
        raise GraphkitError("exporting needs both --target and --out-dir")
    if args.out_dir:
        from graphkit.backends import check_out_dir

        check_out_dir(Path(args.out_dir))


def run(args: argparse.Namespace) -> int:
    if str(args.model).endswith(".param"):
        return run_ncnn(args)
    if args.workers < 1:
        raise GraphkitError(f"--workers must be at least 1, got {args.workers}")
    settings = {}
    if args.percentile is not None:
        if args.method is None or canonical_method(args.method) != "percentile":
            raise GraphkitError("--percentile only applies to --method percentile")
        settings["percentile"] = args.percentile
    recipe = recipe_of(
        args.recipe,
        args.method,
        max_float=parse_share(args.max_float),
        target_agreement=args.target_agreement,
        round_weights=args.round_weights,
        bias_correction=args.bias_correction,
        unsigned=args.unsigned,
        equalize=args.equalize,
        float_op_types=float_types(args),
        targets=targets_of(args),
        fit_samples=args.fit_samples,
        score_samples=args.score_samples,
        rank_samples=args.rank_samples,
        screen_samples=args.screen_samples,
    )
    check_outputs(args)
    model = load_model(args.model)
    with progress_bar() as progress:
        task = progress.add_task("calibrating: samples", total=None)
        stages: dict[str, TaskID] = {}

        def stage(what: str, done: int, total: int) -> None:
            if what not in stages:
                stages[what] = progress.add_task(what, total=total)
            progress.update(stages[what], completed=done, total=total)

        plan = quantize(
            model,
            args.data,
            recipe,
            settings=settings,
            keep_float=args.keep_float,
            log=lambda msg: progress.console.print(f"  {msg}"),
            on_stage=stage,
            workers=args.workers,
            executor=args.executor,
            ray_address=args.ray_address,
            limit=args.limit,
            tensors=args.tensors or default_tensors(args),
            per_channel=not args.per_tensor_weights,
            bins=args.bins,
            max_outputs_per_run=args.max_outputs_per_run,
            on_sample=lambda: progress.advance(task),
            on_total=lambda n: progress.update(task, total=n),
        )
    plan.model_path = args.model
    qdq = None
    if args.qdq:
        qdq = insert_qdq(plan.deploy_model(model), plan)
        make_session(qdq)  # refuse to write a model onnxruntime cannot load
    # the plan first: minutes of calibration must survive a backend that fails to export
    if args.output:
        plan.save(args.output)
    if qdq is not None:
        save_model(qdq, args.qdq)
    if getattr(args, "target", None) or getattr(args, "out_dir", None):
        try:
            export_from_args(args, plan, model, Path(args.model).stem)
        except GraphkitError as exc:
            if not args.output:
                raise
            again = f"graphkit export {args.output} {args.model} --target TARGETS --out-dir DIR"
            raise type(exc)(f"{exc} (the plan is saved in {args.output}: `{again}`)") from None
    console.print(summary(plan, args))
    write_json(
        args.json,
        {
            "plan": args.output,
            "qdq": args.qdq,
            "out_dir": args.out_dir,
            "method": plan.method,
            "activations": len(plan.activations),
            "int8_weights": len(plan.weights),
            "samples": plan.num_samples,
            "keep_float": plan.float_reasons,
            "recipe": plan.recipe,
        },
    )
    missed = plan.recipe.get("target_reached") is False
    return EXIT_TARGET_MISSED if missed and args.strict else 0


def run_ncnn(args: argparse.Namespace) -> int:
    """An ncnn model (.param beside its .bin): ncnn2table + ncnn2int8 into --out-dir."""
    from graphkit.backends.ncnn.native import DEFAULT_METHOD, calibrate_ncnn_model, write_ncnn_int8

    onnx_only = {
        "-o": args.output,
        "--qdq": args.qdq,
        "--target": args.target,
        "--recipe": args.recipe != "default",
        "--max-float": args.max_float,
        "--target-agreement": args.target_agreement,
        "--strict": args.strict,
        "--round-weights": args.round_weights is not None,
        "--bias-correction": args.bias_correction,
        "--unsigned": args.unsigned,
        "--equalize": args.equalize,
        "--fit-samples": args.fit_samples,
        "--score-samples": args.score_samples,
        "--rank-samples": args.rank_samples,
        "--screen-samples": args.screen_samples,
        "--workers": args.workers != 1,
        "--executor ray": args.executor == "ray",
        "--tensors": args.tensors,
        "--per-tensor-weights": args.per_tensor_weights,
        "--max-outputs-per-run": args.max_outputs_per_run,
        "--ncnn-recalibrate": args.ncnn_recalibrate,
    }
    given = [flag for flag, value in onnx_only.items() if value]
    if given:
        raise GraphkitError(
            f"{given[0]} applies to ONNX models; an ncnn model is calibrated into --out-dir "
            "(table and int8 model, as ncnn2table and ncnn2int8 write them)"
        )
    if not args.out_dir:
        raise GraphkitError("an ncnn model is calibrated into --out-dir: give --out-dir DIR")
    from graphkit.backends import check_out_dir

    check_output_files([args.model, *spec_inputs(args.data)], json=args.json)
    check_out_dir(Path(args.out_dir))
    settings = {"bins": args.bins}
    if args.percentile is not None:
        settings["percentile"] = args.percentile
    method = args.method or DEFAULT_METHOD
    with progress_bar("calibrating ncnn", "samples") as progress:
        task = progress.add_task("calibrate", total=args.limit)
        table, context = calibrate_ncnn_model(
            args.model,
            args.data,
            method=method,
            settings=settings,
            keep_float=args.keep_float,
            winograd_6bit=args.ncnn_winograd_6bit,
            limit=args.limit,
            on_sample=lambda: progress.advance(task),
        )
    files = write_ncnn_int8(table, context, args.out_dir)
    console.print(
        f"[green]wrote {args.out_dir}[/]: {len(table.activations)} ncnn layers int8 "
        f"({canonical_method(method)}, {context.samples} samples)",
        markup=True,
    )
    for f in files:
        console.print(f"  {f.path}: {f.what}", markup=False, soft_wrap=True)
    from graphkit.commands.export import files_doc

    write_json(
        args.json,
        {
            "method": canonical_method(method),
            "samples": context.samples,
            "files": files_doc(files),
        },
    )
    return 0


# the recipe's steps as `plan.recipe["seconds"]` names them
STAGES = {
    "tensor_methods": "per-tensor thresholds",
    "rounding": "weight rounding",
    "bias_first": "bias correction first",
    "float": "float search",
    "bias": "bias correction",
}


def summary(plan, args: argparse.Namespace) -> str:
    """What was decided, in a few lines."""
    r = plan.recipe
    wrote = [x for x in (args.output, args.qdq, args.out_dir) if x]
    lines = [
        (
            f"[green]wrote {', '.join(wrote)}[/]: {plan.method}, {len(plan.activations)} "
            f"activations, {len(plan.weights)} int8 weights, {plan.num_samples} samples"
        )
    ]
    unsigned = len(plan.unsigned_activations())
    targets = r.get("recipe", {}).get("targets", ())
    signed_targets = int8_only(targets)
    if unsigned:
        lines.append(
            f"{unsigned} never-negative activations uint8 in onnxruntime's Q/DQ"
            + (
                f", shifted onto int8 with the same step for {', '.join(signed_targets)}"
                if signed_targets
                else " (ncnn, TensorRT, Ascend and vacc get them shifted onto int8 where "
                "a Conv makes them and Convs read them; --target measures the plan so)"
            )
        )
    if unsigned and runs_uint8(targets):
        lines.append(
            "  onnxruntime runs uint8 x int8 exactly on CPUs with VNNI and on ARM, "
            "not on x86 with AVX2 only (16-bit sums saturate"
            + ("" if uint8_conv_exact() else ", as on this CPU")
            + "): deploying there, calibrate with --unsigned off"
        )
    skipped = r.get("unsigned", {}).get("skipped")
    if skipped:
        lines.append(
            f"{r['unsigned']['tensors']} never-negative activations kept signed: {skipped} "
            "(the candidates were measured unfused); for a VNNI or ARM target, --unsigned on"
        )
    if held_out := held_out_summary(plan):
        lines.append(held_out)
    if seconds := r.get("seconds"):
        parts = ", ".join(f"{STAGES.get(k, k)} {v:.1f}" for k, v in seconds.items())
        lines.append(f"took {sum(seconds.values()):.0f} s: {parts}")
    fl = r.get("float_layers")
    if fl:
        forced = fl.get("for_targets")
        why = f" ({forced} of them because a --target runs them float)" if forced else ""
        if forced and forced > r["recipe"]["max_float"] * fl["of"]:
            why += f", more than --max-float {r['recipe']['max_float']:.0%}"
        lines.append(f"float layers: {fl['count']} of {fl['of']}{why}")
        lines += [f"  {n}: {why}" for n, why in plan.float_reasons.items()]
    target = r.get("recipe", {}).get("target_agreement")
    if target is not None and r.get("target_reached") is None and r.get("final"):
        lines.append(
            "agreement not measured (the spec has no decode: section or no person boxes): "
            "float layers chosen by head SQNR within the budget"
        )
    if target is not None and r.get("target_reached") is False:
        search = float_search(plan)
        stopped = search.stopped if search is not None else ""
        if stopped in ("", BUDGET_SPENT):  # "": no search, or a plan from before the reason
            why = (
                f"within the float budget ({r['recipe']['max_float']:.0%}); "
                "raise --max-float or see docs/accuracy.md"
            )
        else:  # the budget was not the limit: a larger one would not help
            why = f"and the float search stopped before the budget: {stopped}; see docs/accuracy.md"
        lines.append(f"[yellow]target agreement {target} not reached {why}[/]")
    return "\n".join(lines)
