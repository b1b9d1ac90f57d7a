"""Where int8 and FP32 keypoints disagree: jumps on unsure joints, or small shifts?

Per shared model: calibrate with graphkit's default (train2017 crops), run FP32 and the
Q/DQ int8 model on the val2017 crops, and split the agreement loss (1 - OKS similarity
of each keypoint, COCO's per-joint sigmas, at the person's area) by how far the keypoint
moved (similarity bands) and by the FP32 confidence of the keypoint (lower / upper half).

    python benchmarks/disagreement.py [--models posenet movenet-lightning]
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

BANDS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.01))


def split_loss(fp: dict, q: dict) -> dict:
    """Similarity of every keypoint (N, 17) and the loss shares by band and confidence."""
    from graphkit.pose.oks import COCO_SIGMAS

    a = {p["index"]: p for p in fp["predictions"]}
    b = {p["index"]: p for p in q["predictions"]}
    sims, conf = [], []
    for i in sorted(a):
        ka, kb = np.asarray(a[i]["keypoints"]), np.asarray(b[i]["keypoints"])
        d2 = ((ka[:, :2] - kb[:, :2]) ** 2).sum(axis=1)
        sims.append(np.exp(-d2 / (2 * COCO_SIGMAS) ** 2 / a[i]["area"] / 2))
        conf.append(ka[:, 2])
    joints = np.asarray(fp["predicted_joints"], bool)  # as agreement_of: joints the model has
    s, c = np.array(sims)[:, joints], np.array(conf)[:, joints]
    loss = 1.0 - s
    total = float(loss.sum()) or 1.0
    bands = {
        f"[{lo}, {min(hi, 1.0)}]": (
            float(((s >= lo) & (s < hi)).mean()),
            float(loss[(s >= lo) & (s < hi)].sum() / total),
        )
        for lo, hi in BANDS
    }
    low = c < np.median(c)
    return {
        "agreement": float(s.mean()),
        "bands": bands,
        "low_conf": float(loss[low].sum() / total),
    }


def main() -> int:
    from pose_int8 import MODELS, assets, spec_of, val_args

    from graphkit.evaluators.evaluate import evaluate
    from graphkit.model import load_model, save_model
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import quantize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = assets() / "models" / f"{name}.onnx"
            model, spec = load_model(path), spec_of(name, None)
            plan = quantize(model, spec)
            qdq = save_model(insert_qdq(plan.deploy_model(model), plan), Path(tmp) / "q.onnx")
            r = split_loss(
                evaluate(str(path), spec, **val_args()), evaluate(str(qdq), spec, **val_args())
            )
            print(f"{name}: agreement {r['agreement']:.3f}")
            for band, (share, loss) in r["bands"].items():
                print(f"  similarity {band}: {share:.1%} of keypoints, {loss:.1%} of the loss")
            print(f"  the less confident half of the keypoints: {r['low_conf']:.1%} of the loss")
    return 0


if __name__ == "__main__":
    sys.exit(main())
