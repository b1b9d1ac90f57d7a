"""`graphkit eval` time against FP32 inference of the same crops (the scale issue's target:
within 1.3x). Both on onnxruntime, same model, the val2017 crops of each model config's
eval split; best of `--repeat` runs each. Eval includes reading and warping the images,
decoding, mapping back and one pycocotools run.

    python benchmarks/eval_speed.py [--models efficientpose posenet movenet-lightning]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ASSETS = Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def main() -> None:
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.evaluators.evaluate import evaluate, prepare_spec
    from graphkit.model import load_model
    from graphkit.runtime.ort import make_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=["efficientpose", "posenet", "movenet-lightning"]
    )
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("GRAPHKIT_ASSETS", str(ASSETS))
    print("| model | crops | FP32 inference s | graphkit eval s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        spec = prepare_spec(
            load_input_spec(ROOT / "examples/models" / f"{name}.yaml"), None, None, None, None
        )
        path = ASSETS / "models" / f"{name}.onnx"
        sess = make_session(load_model(path))
        feeds = [s.feeds for s in iter_samples(spec)]
        best_i = best_e = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            for f in feeds:
                sess.run(None, f)
            best_i = min(best_i, time.perf_counter() - t)
            t = time.perf_counter()
            evaluate(path, spec)
            best_e = min(best_e, time.perf_counter() - t)
        print(f"| {name} | {len(feeds)} | {best_i:.2f} | {best_e:.2f} | {best_e / best_i:.2f}x |")


if __name__ == "__main__":
    main()
