"""Output SQNR of graphkit's Q/DQ models against FP32, per calibration method.

Calibrates each model once on the spec's data (train2017 person crops by default; the
statistics are collected once and every method's table is computed from them), inserts
Q/DQ, and measures on the val2017 person crops: SQNR = 10 log10(sum y^2 / sum (y - q)^2)
over all crops, per model output.

    python benchmarks/sqnr.py [--models efficientpose posenet movenet-lightning] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphkit.data import iter_samples, load_input_spec
from graphkit.model import load_model
from graphkit.quant.calibrate import build_table, collect_statistics, describe_source
from graphkit.quant.collect import select_tensors
from graphkit.quant.qdq import insert_qdq
from graphkit.runtime.ort import make_session

METHODS = {
    "minmax": {},
    "entropy-trt": {},
    "kl-ncnn": {},
    "percentile": {"percentile": 99.99},
    "mse": {},
}


def assets() -> Path:
    return Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def sqnr_db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def evaluate(model, qdq, feeds_list) -> dict[str, float]:
    ref, got = make_session(model), make_session(qdq)
    names = [o.name for o in ref.get_outputs()]
    sig = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for feeds in feeds_list:
        for name, a, b in zip(names, ref.run(None, feeds), got.run(None, feeds)):
            if not np.issubdtype(a.dtype, np.floating):
                continue
            a, b = a.astype(np.float64), b.astype(np.float64)
            sig[name] += float(np.sum(a * a))
            noise[name] += float(np.sum((a - b) ** 2))
    return {n: sqnr_db(sig[n], noise[n]) for n in names if sig[n] > 0}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models", nargs="+", default=["efficientpose", "posenet", "movenet-lightning"]
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--limit", type=int, help="calibration crops (default: all)")
    ap.add_argument(
        "--keep-float", nargs="*", default=[], help="node names kept float (all models)"
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    a = assets()
    results = {}
    for name in args.models:
        model = load_model(a / "models" / f"{name}.onnx")
        spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
        if args.limit:
            spec = spec.with_source(limit=args.limit)
        val = spec.with_source(
            ann=str(a / "coco-mini/annotations/person_keypoints_val2017.json"),
            images=str(a / "coco-mini/val2017"),
            limit=None,
        )
        keep = [k for k in args.keep_float if any(n.name == k for n in model.graph.node)]
        t0 = time.perf_counter()
        tensors = select_tensors(model, "quantizable", keep)
        stats = collect_statistics(model, spec, tensors)
        collect_s = time.perf_counter() - t0
        val_feeds = [s.feeds for s in iter_samples(val)]
        results[name] = {
            "calibration_crops": next(iter(stats.values())).samples,
            "val_crops": len(val_feeds),
            "collect_seconds": round(collect_s, 2),
            "methods": {},
        }
        for method in args.methods:
            table = build_table(
                model,
                stats,
                method,
                METHODS.get(method, {}),
                keep_float=keep,
                data_source=describe_source(spec),
            )
            qdq = insert_qdq(model, table)
            per_out = evaluate(model, qdq, val_feeds)
            results[name]["methods"][method] = per_out
            shown = ", ".join(f"{o}: {v:.1f} dB" for o, v in per_out.items())
            print(f"{name:18s} {method:12s} {shown}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
