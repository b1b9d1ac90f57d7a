"""Calibration time and peak memory on full-size pose architectures, against NNCF.

The shared models are small (31-85 weighted layers); users bring HRNets, ResNets and
hourglasses with hundreds, and transformers (ViTPose, RTMPose). Per architecture of benchmarks/pose_zoo.py (seeded random
weights, exported with torch), in one run on the same train2017 crops:

- FP32 inference over the crops (one onnxruntime session, data loading included);
- `graphkit calibrate MODEL --data SPEC -o plan.json` (the default recipe), its own
  process: wall time, peak RSS and the plan's time per stage;
- NNCF's default (`nncf.quantize`, preset performance, subset = all crops), its own
  process: wall time and peak RSS.

Accuracy is not measured: random weights have no keypoints to agree on. Needs torch for
the export and `pip install nncf` for the NNCF column.

    python benchmarks/large_pose.py [--models hrnet_w32 ...] [--limit 86] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heldout import assets

# runs a module (`graphkit ...`) or `--code SOURCE ARGS...`, then prints its peak RSS
PEAK = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    if sys.argv[0] == "--code":
        sys.argv = sys.argv[1:]
        exec(compile(sys.argv[0], "<child>", "exec"), {"__name__": "__main__"})
    else:
        runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""

NNCF_CHILD = """
import sys, onnx, nncf
from graphkit.data import iter_samples, load_input_spec
model, spec, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = load_input_spec(spec)
spec = spec.with_source(limit=limit) if limit else spec
feeds = [s.feeds for s in iter_samples(spec)]
q = nncf.quantize(onnx.load(model), nncf.Dataset(feeds), subset_size=len(feeds))
onnx.save(q, out)
"""


def fp32_seconds(model: Path, spec_path: Path, limit: int) -> tuple[float, int]:
    """FP32 inference over the crops (data loading included) and how many crops."""
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.model import load_model
    from graphkit.runtime.ort import make_session

    spec = load_input_spec(spec_path)
    spec = spec.with_source(limit=limit) if limit else spec
    sess = make_session(load_model(model))
    start, count = time.perf_counter(), 0
    for s in iter_samples(spec):
        sess.run(None, s.feeds)
        count += 1
    return time.perf_counter() - start, count


def measured(argv: list[str]) -> tuple[float, float | None, str]:
    """(seconds, peak RSS GB or None, 'ok' or why not) of a command run under PEAK."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if run.returncode != 0 or "peak" not in run.stderr:
        last = (run.stderr.strip().splitlines() or ["?"])[-1]
        return seconds, None, f"failed: {last[:120]}"
    return seconds, int(run.stderr.split("peak")[-1]) / 2**30, "ok"


def main() -> int:
    from pose_zoo import MODELS, build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="*", choices=list(MODELS), help="default: all")
    ap.add_argument("--limit", type=int, default=0, help="calibration crops (default: all 86)")
    ap.add_argument("--dir", type=Path, help="where the models are built (default: a temp dir)")
    args = ap.parse_args()
    assets()
    work = args.dir or Path(tempfile.mkdtemp(prefix="graphkit-large-pose-"))
    limit = ["--limit", str(args.limit)] if args.limit else []
    rows = []
    for name in args.models or list(MODELS):
        model, spec = work / f"{name}.onnx", work / f"{name}.yaml"
        if not (model.exists() and spec.exists()):
            model, spec = build(name, work)
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        weights = {i.name for i in graph.initializer}
        layers = sum(
            n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input[1] in weights
            for n in graph.node
        )
        base, crops = fp32_seconds(model, spec, args.limit)
        plan = work / f"{name}.plan.json"
        calibrate = ["graphkit", "calibrate", str(model), "--data", str(spec), "-o", str(plan)]
        gk_s, gk_peak, gk_ok = measured([*calibrate, *limit])
        stages = ""
        if gk_ok == "ok":
            seconds = json.loads(plan.read_text())["recipe"]["seconds"]
            stages = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        out = work / f"{name}.nncf.onnx"
        nncf_argv = ["--code", NNCF_CHILD, str(model), str(spec), str(out), str(args.limit)]
        nncf_s, nncf_peak, nncf_ok = measured(nncf_argv)
        rows.append(
            (name, layers, crops, base, gk_s, gk_peak, gk_ok, stages, nncf_s, nncf_peak, nncf_ok)
        )
        print(f"{name}: done", file=sys.stderr)
    print(
        "| model | weighted layers | crops | FP32 s | graphkit default s (x FP32) | peak GB "
        "| graphkit stages s | NNCF default s (x FP32) | peak GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, layers, crops, base, gk_s, gk_peak, gk_ok, stages, nncf_s, nncf_peak, nncf_ok in rows:
        gk = f"{gk_s:.1f} ({gk_s / base:.1f}x)" if gk_ok == "ok" else gk_ok
        nn = f"{nncf_s:.1f} ({nncf_s / base:.1f}x)" if nncf_ok == "ok" else nncf_ok
        gk_gb = f"{gk_peak:.2f}" if gk_peak is not None else ""
        nn_gb = f"{nncf_peak:.2f}" if nncf_peak is not None else ""
        print(
            f"| {name} | {layers} | {crops} | {base:.1f} | {gk} | {gk_gb} | {stages} | {nn} | {nn_gb} |"
        )
    print(f"models in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
