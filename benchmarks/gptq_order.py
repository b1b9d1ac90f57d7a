"""GPTQ's column order: graph order (the default) against "act-order", on val2017.

    python benchmarks/gptq_order.py [--models posenet movenet-lightning ...]

GPTQ rounds a layer's weight columns one by one and pushes each rounding error onto the
columns not yet rounded. "act-order" (from the GPTQ authors' code) rounds the columns
with the largest Hessian diagonal (the inputs with the most energy) first, so that their
errors can still be absorbed by many others. Per shared model, in one run: the default
plan with graphkit's weight rounding as it is and with the columns of every GPTQ block
taken in descending Hessian-diagonal order (`refine._gptq` wrapped: columns permuted,
rounded, permuted back), each evaluated on val2017 like benchmarks/pose_int8.py; printed:
held-out score, AP, agreement with FP32 +- its 95 % half-width, and act-order's paired
difference from the default on the same persons.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from heldout import MODELS, ROOT, assets


def act_order(gptq):
    """`gptq` (refine._gptq) with each group's columns in descending Hessian diagonal."""

    def rounded(w, h, scale, damp, pins=None, block=128):
        cols = w.shape[2]
        perm = np.argsort(-h[:, np.arange(cols), np.arange(cols)], axis=1, kind="stable")
        back = np.argsort(perm, axis=1)
        hp = np.take_along_axis(h, perm[:, :, None], axis=1)
        hp = np.take_along_axis(hp, perm[:, None, :], axis=2)
        wp = np.take_along_axis(w, perm[:, None, :], axis=2)
        pp = None if pins is None else np.take_along_axis(pins, perm[:, None, :], axis=2)
        return np.take_along_axis(gptq(wp, hp, scale, damp, pp, block), back[:, None, :], axis=2)

    return rounded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    args = ap.parse_args()

    from graphkit.data import load_input_spec
    from graphkit.evaluators.evaluate import agreement_details, evaluate, paired_difference
    from graphkit.model import load_model, save_model
    from graphkit.quant import refine
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import quantize

    graph_order = refine._gptq
    a = assets()
    val = {
        "ann": str(a / "coco-mini/annotations/person_keypoints_val2017.json"),
        "images": str(a / "coco-mini/val2017"),
    }
    print(
        "| model | column order | held-out mean head SQNR dB | AP | agreement "
        "| against graph order, paired | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = a / "models" / f"{name}.onnx"
            model = load_model(path)
            spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
            fp = evaluate(str(path), spec, **val)
            first = None
            for label, gptq in (("graph", graph_order), ("act-order", act_order(graph_order))):
                refine._gptq = gptq
                try:
                    start = time.perf_counter()
                    plan = quantize(model, spec)
                    seconds = time.perf_counter() - start
                finally:
                    refine._gptq = graph_order
                qdq = Path(tmp) / f"{name}.onnx"
                save_model(insert_qdq(plan.deploy_model(model), plan), qdq)
                r = evaluate(str(qdq), spec, **val)
                d = agreement_details(fp, r)
                half = (d["interval95"][1] - d["interval95"][0]) / 2
                versus = ""
                if first is None:
                    first = d
                else:
                    diff, diff_half = paired_difference(first, d)
                    versus = f"{diff:+.4f} ±{diff_half:.4f}"
                print(
                    f"| {name} | {label} | {plan.recipe['final']['mean_sqnr_db']} | "
                    f"{r['stats']['AP']:.4f} | {d['agreement']:.3f} ±{half:.3f} | {versus} "
                    f"| {seconds:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
