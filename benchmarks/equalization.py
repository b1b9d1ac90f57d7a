"""Does cross-layer equalization help int8 pose models? Held-out head SQNR with and without.

Per model: the pairs `graphkit.quant.equalize.find_pairs` finds (Conv -> Conv, Conv ->
Relu -> Conv, Conv -> Clip(0, 6) -> Conv), scales measured on every calibration crop
(`equalization`), the model rewritten (`apply_equalization`, same function), calibrated
again with each method and scored on the held-out crops of the default recipe (crops
8-16: the worst head's SQNR in dB and keypoint agreement with FP32), every pair kind alone and all
together, against the same calibration without equalization.

    python benchmarks/equalization.py [--models posenet movenet-lightning] [--methods mse]

With `--default`: the default recipe (`graphkit.quantize`) on the model with only the
pairs that need no new node equalized (Relu or nothing between), scales from the first
`--range-crops` calibration crops, against the default on the model as it is: held-out
score, val2017 agreement and its paired difference.

    python benchmarks/equalization.py --default --models movenet-lightning --range-crops 86

With `--ncnn` as well: the plans made for ncnn (`--target ncnn`), also exported there and
scored in ncnn int8 (agreement with FP32).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from heldout import MODELS, held_out_setup


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=["posenet", "movenet-lightning"], choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=["mse", "percentile"])
    ap.add_argument("--default", action="store_true", help="the default recipe, val2017")
    ap.add_argument("--range-crops", type=int, default=86, help="crops the scales come from")
    ap.add_argument("--ncnn", action="store_true", help="with --default: also in ncnn int8")
    args = ap.parse_args()
    if args.default:
        return with_default(args.models, args.range_crops, args.ncnn)
    from graphkit.data import iter_samples
    from graphkit.quant.calibrate import calibrate
    from graphkit.quant.equalize import apply_equalization, equalization
    from graphkit.quant.qdq import insert_qdq

    print("| model | method | pairs | count | head SQNR dB | agreement |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, spec, _, scorer = held_out_setup(name)
        eq = equalization(model, [s.feeds for s in iter_samples(spec)])
        ops = {n.name: n.op_type for n in model.graph.node}
        kinds = {
            "none": [],
            "Conv -> Conv": [e for e in eq if not e["act"]],
            "Conv -> Relu -> Conv": [e for e in eq if e["act"] and ops[e["act"]] == "Relu"],
            "Conv -> Clip -> Conv": [e for e in eq if e["act"] and ops[e["act"]] == "Clip"],
            "all": eq,
        }
        for method in args.methods:
            for kind, pairs in kinds.items():
                if kind != "none" and not pairs:
                    continue
                m = apply_equalization(model, pairs) if pairs else model
                got = scorer.measure(insert_qdq(m, calibrate(m, spec, method)))
                cells = f"{got.worst:.2f} | {got.agreement:.3f}"
                print(f"| {name} | {method} | {kind} | {len(pairs)} | {cells} |")
    return 0


def with_default(models: list[str], crops: int, ncnn: bool) -> int:
    """The --default mode (module doc)."""
    import itertools
    import tempfile

    from heldout import PairedWithFirst, assets, val_args

    from graphkit.backends import export_all
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.evaluators.evaluate import agreement_details, evaluate
    from graphkit.model import load_model
    from graphkit.quant.equalize import apply_equalization, equalization
    from graphkit.quant.quantize import quantize, recipe_of

    recipe = recipe_of("default", targets=("ncnn",) if ncnn else ())
    print(
        "| model | pairs | held-out mean head SQNR dB | agreement | paired | float layers "
        "| ncnn int8 agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            path = assets() / "models" / f"{name}.onnx"
            model = load_model(path)
            spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
            feeds = (s.feeds for s in itertools.islice(iter_samples(spec), crops))
            pairs = equalization(model, feeds, clip=False)  # what `--equalize` takes
            score = PairedWithFirst(path, spec)
            for m in (model, apply_equalization(model, pairs)) if pairs else (model,):
                plan = quantize(m, spec, recipe)
                _, agreement, versus = score(plan, m, Path(tmp) / f"{name}.onnx")
                held = plan.recipe["final"]["mean_sqnr_db"]
                count = len(pairs) if m is not model else 0
                in_ncnn = ""
                if ncnn:  # the rescaled model itself: what `--equalize` has deploy_model make
                    out = Path(tmp) / f"{name}.{count}"
                    export_all(plan, m, ["ncnn"], out)
                    got = evaluate(str(out / "ncnn" / "model.int8.param"), spec, **val_args())
                    in_ncnn = f"{agreement_details(score.fp32, got)['agreement']:.3f}"
                print(f"| {name} | {count} | {held} | {agreement} | {versus} | "
                      f"{len(plan.keep_float)} | {in_ncnn} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
