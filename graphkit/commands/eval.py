"""`graphkit eval MODEL --model-config CFG.yaml --ann ANN.json --images DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, StrictInt
from rich.table import Table

from graphkit.commands._common import (
    add_command,
    add_executor_arguments,
    add_json_argument,
    check_output_files,
    console,
    positive_int,
    progress_bar,
    write_json,
)
from graphkit.errors import GraphkitError, InputError
from graphkit.evaluators.evaluate import (
    agreement_details,
    evaluate,
    evaluation_split,
    paired_difference,
    prepare_spec,
)
from graphkit.validation import read_json, validate


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "eval")
    p.add_argument("model", help="ONNX model (FP32 or Q/DQ) or ncnn .param with its .bin beside")
    p.add_argument("--model-config", required=True, help="input spec YAML with a decode: section")
    p.add_argument(
        "--ann",
        help="COCO person_keypoints json (default: the config's eval: section, else its "
        "source: with a warning)",
    )
    p.add_argument("--images", help="image folder (default: as --ann)")
    p.add_argument("--dets", help="person detections (COCO results json) instead of GT boxes")
    p.add_argument("--backend", choices=("ort", "ncnn"), help="default: from the model file")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes to split the images over (default 1; with --executor ray: shards)",
    )
    add_executor_arguments(p)
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N person boxes")
    add_json_argument(p, "every figure and the per-person keypoints")
    p.add_argument("--results", help="write the COCO-format keypoint results here")
    p.add_argument(
        "--agreement-with",
        help="an earlier --json of the FP32 model: also report the mean OKS agreement with it",
    )
    p.add_argument(
        "--compare-with",
        help="an earlier --json of another model on the same crops (with --agreement-with): "
        "also report this model's agreement minus that one's, person by person, with its "
        "95 %% interval (is this quantization better, or only different by chance?)",
    )
    return p


class _Prediction(BaseModel):
    """What agreement reads of each prediction of a reference `graphkit eval --json`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    index: StrictInt
    keypoints: list[list[float]] | list[float]
    area: float


class _Reference(BaseModel):
    model_config = ConfigDict(extra="allow")
    predictions: list[_Prediction]
    predicted_joints: list[bool]


def load_reference(path: str, flag: str = "--agreement-with") -> dict:
    """A previous `graphkit eval --json` file, checked before it is compared with."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag} {p} does not exist or is not a file")
    data = read_json(p, "graphkit eval --json file")
    if not isinstance(data, dict) or "predictions" not in data:
        raise InputError(f"{p} is not a graphkit eval --json file (no predictions)")
    validate(_Reference, data, str(p))
    return data


def _crops(result: dict) -> set[int] | None:
    """The sample indexes of a top-down result (one person per crop); None for bottom-up
    (several persons per image: no crop to pair them by)."""
    indexes = [p["index"] for p in result["predictions"]]
    return set(indexes) if len(indexes) == len(set(indexes)) else None


def _check_pairing(
    args: argparse.Namespace, total: int, reference: dict, other: dict | None
) -> None:
    """Refuse, before any evaluation, references of other crops than the `total` to run."""
    crops = _crops(reference)
    if crops is not None and crops != set(range(total)):
        raise InputError(
            f"--agreement-with {args.agreement_with} was not evaluated on these crops "
            "(other data, --limit or --dets)"
        )
    if other is None:
        return
    theirs = _crops(other)
    if crops is None or theirs is None:
        raise InputError(
            "--compare-with pairs the persons crop by crop: it needs top-down evaluations "
            "(one person per crop), not whole images"
        )
    if theirs != crops:
        raise InputError(
            f"--compare-with {args.compare_with} was not evaluated on the crops of "
            f"--agreement-with {args.agreement_with}"
        )


def _paired(reference: dict, other: dict, details: dict, path: str) -> dict:
    """This model's agreement minus `other`'s (both against `reference`), person by person."""
    theirs = agreement_details(reference, other)
    difference, half = paired_difference(theirs, details)
    return {
        "path": path,
        "agreement": theirs["agreement"],
        "difference": difference,
        "half95": half,
    }


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise GraphkitError("--workers must be at least 1")
    from graphkit.data import count_samples, load_input_spec

    if args.compare_with and not args.agreement_with:
        raise InputError(
            "--compare-with needs --agreement-with (the reference both are compared to)"
        )
    read = [args.model, args.model_config, args.agreement_with, args.compare_with]
    read += [args.ann, args.dets]
    check_output_files(read, json=args.json, results=args.results)
    config = load_input_spec(args.model_config)
    spec = prepare_spec(config, args.ann, args.images, args.dets, args.limit)
    read += [spec.source.ann, spec.source.dets, spec.source.path]  # the config's own files
    check_output_files(read, json=args.json, results=args.results)
    reference = load_reference(args.agreement_with) if args.agreement_with else None
    other = load_reference(args.compare_with, "--compare-with") if args.compare_with else None
    total = count_samples(spec)
    if reference is not None:
        _check_pairing(args, total, reference, other)
    warning = evaluation_split(config, spec)
    if warning:
        console.print(f"[yellow]warning: {warning}[/]")
    with progress_bar("evaluating") as bar:
        task = bar.add_task("eval", total=total)
        result = evaluate(
            args.model,
            spec,
            backend=args.backend,
            workers=args.workers,
            executor=args.executor,
            ray_address=args.ray_address,
            results_path=args.results,
            on_sample=lambda: bar.advance(task),
        )
    if reference is not None:
        details = agreement_details(reference, result)
        result["agreement"] = details["agreement"]
        result["agreement_details"] = details
        result["agreement_with"] = args.agreement_with
        if other is not None:
            result["compared_with"] = _paired(reference, other, details, args.compare_with)
    t = Table(title=f"COCO keypoint AP: {args.model}", title_justify="left")
    names = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50")
    for n in names:
        t.add_column(n, justify="right")
    t.add_row(*(f"{result['stats'][n]:.4f}" for n in names))
    console.print(t)
    joints = sum(result["predicted_joints"])
    result["warning"] = warning
    if spec.source.type == "images":  # bottom-up: the whole image is the sample
        what = f"{result['samples']} whole images"
    else:
        boxes = "detections" if result["dets"] else "ground-truth boxes"
        what = f"{result['samples']} person boxes on {result['image_count']} images, {boxes}"
    console.print(
        f"{result['ann']}: {what}, decode {result['decode']} "
        f"({joints} of 17 COCO joints), {result['workers']} worker(s)"
        + (" on Ray" if result.get("executor") == "ray" else "")
        + f", {result['seconds']:.1f}s"
    )
    if reference is not None:
        d = result["agreement_details"]
        extra = ""
        if d["matching"] != "by sample":
            extra = (
                f" ({d['pairs']} persons matched by OKS; unmatched: "
                f"{d['unmatched_reference']} of the reference, {d['unmatched']} of this model)"
            )
        low, high = d["interval95"]
        console.print(
            f"agreement (mean OKS with {args.agreement_with}): {result['agreement']:.4f}, "
            f"95 % interval {low:.3f}-{high:.3f} over {d['pairs']} persons{extra}"
        )
        if other is not None:
            c = result["compared_with"]
            console.print(
                f"against {args.compare_with} (agreement {c['agreement']:.4f}): "
                f"{c['difference']:+.4f} ± {c['half95']:.4f} (95 %, paired over {d['pairs']} "
                "persons)"
                + (
                    ""
                    if abs(c["difference"]) > c["half95"]
                    else ": no difference this data can tell"
                )
            )
    write_json(args.json, result)
    if args.results:
        console.print(f"wrote {args.results}")
    return 0
