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
from heldout import MODELS, ROOT, PairedWithFirst, assets


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
    from graphkit.model import load_model
    from graphkit.quant import refine
    from graphkit.quant.quantize import quantize

    graph_order = refine._gptq
    print(
        "| model | column order | held-out mean head SQNR dB | AP | agreement "
        "| against graph order, paired | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = assets() / "models" / f"{name}.onnx"
            model = load_model(path)
            spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
            score = PairedWithFirst(path, spec)
            for label, gptq in (("graph", graph_order), ("act-order", act_order(graph_order))):
                refine._gptq = gptq
                try:
                    start = time.perf_counter()
                    plan = quantize(model, spec)
                    seconds = time.perf_counter() - start
                finally:
                    refine._gptq = graph_order
                ap, agreement, versus = score(plan, model, Path(tmp) / f"{name}.onnx")
                print(
                    f"| {name} | {label} | {plan.recipe['final']['mean_sqnr_db']} | {ap:.4f} "
                    f"| {agreement} | {versus} | {seconds:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
