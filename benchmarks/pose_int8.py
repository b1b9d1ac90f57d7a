"""int8 pose accuracy: graphkit (default and best setting) against onnxruntime quantize_static.

Per model, calibrated on the train2017 person crops of its examples/models spec (86 by
default), evaluated on the val2017 person crops (68, ground-truth boxes), COCO keypoint AP
(pycocotools) and agreement (mean OKS between the FP32 and the int8 keypoints of the same
crop, MANIFEST.md "Judging int8 accuracy"):

- FP32;
- graphkit default: `graphkit calibrate` defaults (mse, per-channel weights, every Conv int8);
- graphkit best: for each of `--best-methods`, Conv weights rounded against the layer
  output (`graphkit.quant.refine.optimize_weights`, fitted on the first `--weight-samples`
  calibration crops); the method whose Q/DQ model has the best head SQNR on the next
  `--sensitivity-samples` calibration crops (held out from the fit) is kept; then the
  `--keep` layers that hurt the heads most are kept float (`graphkit.quant.sensitivity`,
  scored on the same held-out crops). Several `--keep` counts give one row each;
- onnxruntime `quantize_static` (QDQ, per-channel int8 weights, uint8 activations), MinMax
  and Percentile, each in a child process capped at `--mem-gb` of address space (a peer
  that runs out of memory is reported as such).

    python benchmarks/pose_int8.py [--models efficientpose posenet movenet-lightning]
        [--keep 10 20] [--sensitivity-samples 8] [--json out.json] [--no-peers] [--mem-gb 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ["efficientpose", "posenet", "movenet-lightning"]
PEERS = {"ort-minmax": "MinMax", "ort-percentile": "Percentile"}
SETTINGS = {"percentile": {"percentile": 99.99}}


def assets() -> Path:
    return Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def spec_of(name: str, limit: int | None):
    from graphkit.data import load_input_spec

    spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
    return spec.with_source(limit=limit) if limit else spec


def val_args() -> dict:
    a = assets()
    return {
        "ann": str(a / "coco-mini/annotations/person_keypoints_val2017.json"),
        "images": str(a / "coco-mini/val2017"),
    }


# ---------------------------------------------------------------------------------------
# child: one onnxruntime peer


def peer_child(peer: str, name: str, limit: int | None, out: str, mem_gb: float) -> None:
    cap = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from graphkit.data import iter_samples

    spec = spec_of(name, limit)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = (s.feeds for s in iter_samples(spec))

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(assets() / "models" / f"{name}.onnx"),
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, PEERS[peer]),
    )


def run_peer(peer: str, name: str, limit: int | None, out: Path, mem_gb: float) -> str | None:
    """None when the peer wrote its model, else why not (out of memory, failure)."""
    cmd = [sys.executable, __file__, "--child", peer, name, str(out), "--mem-gb", str(mem_gb)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode == 0 and out.exists():
        return None
    err = proc.stderr
    oom = proc.returncode in (-9, -6) or any(
        k in err for k in ("MemoryError", "bad_alloc", "Failed to allocate", "out of memory")
    )
    if oom:
        return f"out of memory (> {mem_gb:g} GB cap)"
    tail = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
    return f"failed: {tail[:100]}"


# ---------------------------------------------------------------------------------------
# parent


def bench_model(name: str, args, tmp: Path) -> dict:
    from graphkit.data import iter_samples
    from graphkit.evaluators.decoders import build_decoder
    from graphkit.evaluators.evaluate import agreement_of, evaluate
    from graphkit.model import load_model, save_model
    from graphkit.quant.calibrate import build_table, collect_statistics
    from graphkit.quant.collect import select_tensors
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.refine import optimize_weights, restore_weights
    from graphkit.quant.sensitivity import (
        OutputScorer,
        choose_keep_float,
        head_tensors,
        with_keep_float,
    )

    path = assets() / "models" / f"{name}.onnx"
    model = load_model(path)
    spec = spec_of(name, args.limit)
    val = val_args()
    rows: list[dict] = []
    t0 = time.perf_counter()
    fp = evaluate(str(path), spec, **val)
    rows.append({"setting": "FP32", "AP": fp["stats"]["AP"], "agreement": 1.0})
    print(f"{name}: FP32 AP {fp['stats']['AP']:.4f}", flush=True)

    def score(qdq_model, setting: str, **extra) -> None:
        p = tmp / f"{name}.{len(rows)}.onnx"
        save_model(qdq_model, p)
        r = evaluate(str(p), spec, **val)
        row = {"setting": setting, "AP": r["stats"]["AP"], "agreement": agreement_of(fp, r)}
        rows.append({**row, **extra})
        print(f"{name}: {setting}: AP {row['AP']:.4f} agreement {row['agreement']:.3f}", flush=True)

    stats = collect_statistics(model, spec, select_tensors(model))
    default = build_table(model, stats, "mse")
    score(insert_qdq(model, default), "graphkit default (mse)")

    # best: per model, the method whose rounded Q/DQ model scores best on held-out
    # calibration crops (not the ones the weights were fitted on), then layers kept float
    n_fit, n_score = args.weight_samples, args.sensitivity_samples
    samples = [s.feeds for s in itertools.islice(iter_samples(spec), n_fit + n_score)]
    scored = head_tensors(model, build_decoder(spec.decode).outputs)
    scorer = OutputScorer(model, samples[n_fit:], scored)
    t1 = time.perf_counter()
    tried = {}
    for method in args.best_methods:
        table = build_table(model, stats, method, SETTINGS.get(method, {}))
        rounded, _ = optimize_weights(model, samples[:n_fit], table)
        tried[method] = (scorer(insert_qdq(rounded, table)), table, rounded)
        print(f"{name}: {method} + rounding: {tried[method][0]:.2f} dB", flush=True)
    method = max(tried, key=lambda m: tried[m][0])
    _, table, rounded = tried[method]
    score(insert_qdq(rounded, table), f"graphkit {method} + weight rounding")
    choice = choose_keep_float(model, scorer, table, count=max(args.keep), base=rounded)
    best_s = time.perf_counter() - t1
    for count in sorted(set(args.keep)):
        keep = choice.keep_float[:count]
        final = restore_weights(rounded, model, keep)
        qdq = insert_qdq(final, with_keep_float(table, keep))
        score(
            qdq,
            f"graphkit {method} + rounding + {len(keep)} float",
            keep_float=keep,
            sqnr_db={
                "methods_rounded": {m: v[0] for m, v in tried.items()},
                "final": scorer(qdq),
            },
            scored=scored,
            seconds=round(best_s, 1),
        )
    if not args.no_peers:
        for peer, method in PEERS.items():
            out = tmp / f"{name}.{peer}.onnx"
            why = run_peer(peer, name, args.limit, out, args.mem_gb)
            if why is None:
                score(load_model(out), f"onnxruntime {method}")
            else:
                rows.append({"setting": f"onnxruntime {method}", "status": why})
                print(f"{name}: onnxruntime {method}: {why}", flush=True)
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}


def markdown(results: dict) -> str:
    lines = [
        "| model | setting | AP | ΔAP vs FP32 | agreement | layers kept float |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        fp_ap = res["rows"][0]["AP"]
        for r in res["rows"]:
            if "status" in r:
                lines.append(f"| {name} | {r['setting']} | {r['status']} | | | |")
                continue
            delta = "" if r["setting"] == "FP32" else f"{r['AP'] - fp_ap:+.4f}"
            kept = len(r.get("keep_float", [])) if "keep_float" in r else ""
            lines.append(
                f"| {name} | {r['setting']} | {r['AP']:.4f} | {delta} | {r['agreement']:.3f} "
                f"| {kept} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--limit", type=int, help="calibration crops (default: all 86)")
    ap.add_argument("--best-methods", nargs="+", default=["minmax", "mse", "percentile", "kl-ncnn"])
    ap.add_argument(
        "--keep",
        type=int,
        nargs="+",
        default=[10, 20],
        help="layers kept float (several: one row each)",
    )
    ap.add_argument("--sensitivity-samples", type=int, default=8)
    ap.add_argument("--weight-samples", type=int, default=8)
    ap.add_argument("--mem-gb", type=float, default=8.0)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--child", nargs=3, metavar=("PEER", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        peer_child(args.child[0], args.child[1], args.limit, args.child[2], args.mem_gb)
        return 0
    results = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results[name] = bench_model(name, args, Path(tmp))
    print()
    print(markdown(results))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
