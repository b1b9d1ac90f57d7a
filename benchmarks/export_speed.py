"""ncnn export time against calibration time on the same model (target: within 2x).

Per model: `graphkit calibrate MODEL --data SPEC --recipe plain` as a library call (the
statistics pass over the spec's 86 train2017 crops and one table), then `graphkit export
PLAN MODEL --target ncnn --data SPEC` (pnnx conversion, the plan mapped onto the ncnn
layers, the int8 files, the int8-vs-fp32 check on 8 crops). Same process, same inputs.

    python benchmarks/export_speed.py [--models efficientpose posenet]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    from pose_int8 import assets, spec_of

    from graphkit.backends import export_all
    from graphkit.data import iter_samples
    from graphkit.model import load_model
    from graphkit.quant.quantize import quantize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["efficientpose", "posenet"])
    args = ap.parse_args()
    print("| model | calibrate (plain) s | ncnn export s | export / calibrate |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = assets() / "models" / f"{name}.onnx"
            spec = spec_of(name, None)
            start = time.perf_counter()
            model = load_model(path)
            plan = quantize(model, spec, "plain")
            plan.save(Path(tmp) / f"{name}.json")
            calibrate_s = time.perf_counter() - start
            start = time.perf_counter()

            def samples(spec=spec):
                return (s.feeds for s in itertools.islice(iter_samples(spec), None))

            export_all(plan, model, ["ncnn"], Path(tmp) / name, samples=samples)
            export_s = time.perf_counter() - start
            print(
                f"| {name} | {calibrate_s:.1f} | {export_s:.1f} | {export_s / calibrate_s:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
