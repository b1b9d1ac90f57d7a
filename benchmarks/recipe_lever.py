"""One recipe option against the default, on val2017: does a lever help the pose models?

    python benchmarks/recipe_lever.py tensor_methods=true [--models posenet ...]
    GRAPHKIT_INT8_KERNELS=saturating python benchmarks/recipe_lever.py   # default only


Per shared model, in one run: `graphkit.quantize(model, spec, recipe)` with the default
recipe and with the default plus the given options (`recipe_of("default", **options)`),
each Q/DQ model evaluated on the val2017 crops like benchmarks/pose_int8.py (COCO AP and
agreement with FP32, +- the half-width of its 95 % interval over the persons, and the option's
paired difference from the default on the same persons with its own 95 % half-width), with
its held-out score and calibration time. The held-out score is
what the recipe optimizes; val2017 says whether that generalizes. Without options, the
default alone (e.g. under GRAPHKIT_INT8_KERNELS, to see the plan another kind of CPU makes).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

from heldout import MODELS, ROOT, PairedWithFirst, assets


def parse_option(text: str) -> tuple[str, object]:
    """name=value, the value a Python literal (true/false accepted)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"options are name=value, got {text!r}")
    value = {"true": "True", "false": "False", "none": "None"}.get(value.lower(), value)
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("options", nargs="*", help="recipe options, name=value")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    args = ap.parse_args()
    options = dict(parse_option(o) for o in args.options)

    from graphkit.data import load_input_spec
    from graphkit.errors import GraphkitError
    from graphkit.model import load_model
    from graphkit.quant.quantize import quantize, recipe_of

    try:
        recipes = {"default": recipe_of("default")}
        if options:
            recipes[str(options)] = recipe_of("default", **options)
    except (GraphkitError, TypeError) as exc:
        print(f"recipe_lever: {exc}", file=sys.stderr)
        return 2
    print(
        "| model | recipe | held-out mean head SQNR dB | AP | agreement | against the "
        "default, paired | seconds | float search s | float layers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = assets() / "models" / f"{name}.onnx"
            model = load_model(path)
            spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
            score = PairedWithFirst(path, spec)  # the default first: the others against it
            for label, recipe in recipes.items():
                start = time.perf_counter()
                plan = quantize(model, spec, recipe)
                seconds = time.perf_counter() - start
                ap, agreement, versus = score(plan, model, Path(tmp) / f"{name}.onnx")
                final = plan.recipe.get("final") or {}
                print(
                    f"| {name} | {label} | {final.get('mean_sqnr_db')} | {ap:.4f} | {agreement} "
                    f"| {versus} | {seconds:.1f} | "
                    f"{plan.recipe['seconds'].get('float', 0.0):.1f} | "
                    f"{', '.join(sorted(plan.keep_float))} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
