"""Does cross-layer equalization help int8 pose models? Held-out head SQNR with and without.

Per model: the pairs `graphkit.quant.equalize.find_pairs` finds (Conv -> Conv, Conv ->
Relu -> Conv, Conv -> Clip(0, 6) -> Conv), scales measured on every calibration crop
(`equalization`), the model rewritten (`apply_equalization`, same function), calibrated
again with each method and scored on the held-out crops of the default recipe (crops
8-16: the worst head's SQNR in dB and keypoint agreement with FP32), every pair kind alone and all
together, against the same calibration without equalization.

    python benchmarks/equalization.py [--models posenet movenet-lightning] [--methods mse]
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    raise SystemExit(main())
