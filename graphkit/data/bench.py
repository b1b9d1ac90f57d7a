"""Time the data pipeline against FP32 inference: is preprocessing ever the bottleneck?

python -m graphkit.data.bench SPEC.yaml [--model MODEL.onnx] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from graphkit.data.check import check_against_model
from graphkit.data.samples import iter_samples
from graphkit.data.spec import load_input_spec
from graphkit.errors import GraphkitError


def time_pipeline(spec_path: str, model_path: str | None = None, repeat: int = 3) -> dict:
    """Best-of-`repeat` seconds for producing every sample, and for running the model on them."""
    spec = load_input_spec(spec_path)
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_samples(spec))
        best = min(best, time.perf_counter() - t0)
    result = {"samples": n, "data_s": best, "data_ms_per_sample": 1000 * best / n}
    if model_path:
        from graphkit.model import load_model
        from graphkit.runtime.ort import make_session

        model = load_model(model_path)
        check_against_model(spec, model)
        sess = make_session(model)
        feeds = [s.feeds for s in iter_samples(spec)]
        sess.run(None, feeds[0])  # warm-up
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        infer = time.perf_counter() - t0
        result.update(infer_s=infer, data_vs_infer=best / infer)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--model")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        r = time_pipeline(args.spec, args.model, args.repeat)
    except GraphkitError as exc:
        print(f"error: {exc}")
        return 2
    line = (
        f"{r['samples']} samples: data {r['data_s']:.3f} s ({r['data_ms_per_sample']:.2f} ms each)"
    )
    if "infer_s" in r:
        line += f"; FP32 inference {r['infer_s']:.3f} s; data/inference = {r['data_vs_infer']:.1%}"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
