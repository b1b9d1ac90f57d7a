"""How much agreement a model loses to perturbations far below int8's: the metric's floor.

Agreement (mean OKS of the FP32 and the int8 keypoints of each val2017 crop) counts every
joint, confident or not; a joint whose heatmap has two near-equal peaks jumps with any
perturbation. Here every Conv / Gemm / MatMul weight of the FP32 model is multiplied by
(1 + eps * N(0, 1)) (seeded), the model evaluated like an int8 one, for eps well below
the relative rounding error of per-channel int8 weights (step / sqrt(12) relative to the
channel's largest weight: 1 / (127 sqrt(12)) = 0.23 %, before activations are rounded).

    python benchmarks/noise_floor.py [--models ...] [--eps 0.0003 0.001 0.003]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def perturbed(model, eps: float, seed: int = 0):
    """A copy of `model` whose layer weights carry relative Gaussian noise `eps`."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    weights = {
        n.input[1]
        for n in out.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1
    }
    for init in out.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init).astype(np.float32)
            noisy = w * (1.0 + eps * rng.standard_normal(w.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    return out


def main() -> int:
    from pose_int8 import MODELS, assets, spec_of, val_args

    from graphkit.evaluators.evaluate import agreement_of, evaluate
    from graphkit.model import load_model, save_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--eps", nargs="+", type=float, default=[0.0003, 0.001, 0.003])
    args = ap.parse_args()
    print("| model | weight noise (relative) | AP | agreement with FP32 |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = assets() / "models" / f"{name}.onnx"
            model, spec = load_model(path), spec_of(name, None)
            fp = evaluate(str(path), spec, **val_args())
            print(f"| {name} | 0 | {fp['stats']['AP']:.4f} | 1.000 |", flush=True)
            for eps in args.eps:
                noisy = save_model(perturbed(model, eps), Path(tmp) / f"{name}.{eps}.onnx")
                r = evaluate(str(noisy), spec, **val_args())
                print(
                    f"| {name} | {eps:.2%} | {r['stats']['AP']:.4f} | {agreement_of(fp, r):.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
