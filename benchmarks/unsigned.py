"""What storing never-negative activations as uint8 brings, before and after weight rounding.

Per model: one calibration (mse thresholds, every layer int8), its Q/DQ model with every
activation signed int8, then with the activations never negative on the calibration data
as uint8 over [0, amax] (`QuantPlan` entries marked `unsigned`, as the default recipe
does), each also with the Conv weights GPTQ-rounded on the recipe's fit crops. Scored on
the default recipe's held-out crops: mean head SQNR (dB) and keypoint agreement with FP32.

    python benchmarks/unsigned.py [--models efficientpose posenet movenet-lightning]
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
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    args = ap.parse_args()
    from graphkit.quant.calibrate import calibrate
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import nonnegative
    from graphkit.quant.refine import optimize_weights

    print("| model | unsigned tensors | weights | signed: SQNR dB / agreement | unsigned |")
    print("|---|---|---|---|---|")
    for name in args.models:
        model, spec, fit, scorer = held_out_setup(name)
        plan = calibrate(model, spec, method="mse")
        names = nonnegative(plan, model)
        rounded, _ = optimize_weights(model, [s.feeds for s in fit], plan)
        for weights, base in (("nearest", model), ("GPTQ", rounded)):
            cells = []
            for unsigned in (False, True):
                plan.set_unsigned(names if unsigned else [])
                got = scorer.measure(insert_qdq(base, plan))
                cells.append(f"{got.mean:.2f} / {got.agreement:.3f}")
            print(
                f"| {name} | {len(names)} of {len(plan.activations)} | {weights} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
