"""Does cross-layer equalization help int8 pose models? Held-out head SQNR with and without.

Per model: the pairs `graphkit.quant.equalize.find_pairs` finds (Conv -> Conv, Conv ->
Relu -> Conv, Conv -> Clip(0, 6) -> Conv), scales measured on every calibration crop
(`equalization`), the model rewritten (`apply_equalization`, same function), calibrated
again with each method and scored on the held-out crops of the default recipe (crops
8-16: head SQNR in dB and keypoint agreement with FP32), every pair kind alone and all
together, against the same calibration without equalization.

    python benchmarks/equalization.py [--models posenet movenet-lightning] [--methods mse]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ["efficientpose", "posenet", "movenet-lightning"]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=["posenet", "movenet-lightning"], choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=["mse", "percentile"])
    args = ap.parse_args()
    assets = Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()
    os.environ.setdefault("GRAPHKIT_ASSETS", str(assets))

    from graphkit.data import iter_samples, load_input_spec
    from graphkit.model import load_model
    from graphkit.pose.decoders import build_decoder
    from graphkit.quant.calibrate import calibrate
    from graphkit.quant.equalize import apply_equalization, equalization
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import HeldOutScorer, held_out, recipe_of
    from graphkit.quant.sensitivity import head_tensors

    print("| model | method | pairs | count | head SQNR dB | agreement |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = load_model(assets / "models" / f"{name}.onnx")
        spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
        _, score = held_out(spec, recipe_of("default"))
        decoder = build_decoder(spec.decode)
        scorer = HeldOutScorer(model, score, head_tensors(model, decoder.outputs), decoder)
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
                sqnr, agree = scorer.measure(insert_qdq(m, calibrate(m, spec, method)))
                print(f"| {name} | {method} | {kind} | {len(pairs)} | {sqnr:.2f} | {agree:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
