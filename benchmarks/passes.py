"""graphkit's default pass pipeline against onnxsim on the same models, in one run.

For each model (the three real pose nets in GRAPHKIT_ASSETS and the onnx "light" zoo that
ships inside the onnx wheel): node count after each tool, wall time (best of --repeat, no
verification for either: onnxsim's check_n=0 and graphkit's verify=False), and the max
abs output difference of each result against the original model on the same random
inputs. Prints a markdown table and whether the targets hold: graphkit's node count no
higher than onnxsim's on every model, and its time within 1.5x of onnxsim's.

    python benchmarks/passes.py [--repeat 3] [--pipeline examples/passes/default.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxsim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphkit.pipeline import load_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def models() -> list[Path]:
    assets = Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets"))
    found = sorted((assets / "models").glob("*.onnx"))
    if not found:
        print(f"(no real models under {assets}/models; set GRAPHKIT_ASSETS)", file=sys.stderr)
    return found + sorted(LIGHT.glob("light_*.onnx"))


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def max_diff(ref: dict, got: dict) -> float:
    worst = 0.0
    for name, a in ref.items():
        b = got[name]
        if a.shape != b.shape:
            return float("inf")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pipeline", default=str(ROOT / "examples" / "passes" / "default.yaml"))
    args = ap.parse_args()
    pipeline = load_pipeline(args.pipeline)
    rows, ok_nodes, ok_time = [], True, True
    for path in models():
        model = onnx.load(str(path))
        name = path.stem
        t_gk, (gk, _) = best_time(
            lambda m=model: run_pipeline(m, pipeline, verify=False), args.repeat
        )
        t_sim, (sim, _) = best_time(lambda m=model: onnxsim.simplify(m, check_n=0), args.repeat)
        feeds = ort_rt.sample_inputs(model, seed=0)
        ref = ort_rt.run(model, feeds)
        d_gk, d_sim = max_diff(ref, ort_rt.run(gk, feeds)), max_diff(ref, ort_rt.run(sim, feeds))
        n0, n_gk, n_sim = len(model.graph.node), len(gk.graph.node), len(sim.graph.node)
        ok_nodes &= n_gk <= n_sim
        ok_time &= t_gk <= 1.5 * t_sim
        rows.append(
            f"| {name} | {n0} | {n_gk} | {n_sim} | {n_gk / n_sim:.2f} | {t_gk:.2f} | "
            f"{t_sim:.2f} | {t_gk / t_sim:.2f} | {d_gk:.1e} | {d_sim:.1e} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    print(
        "| model | nodes | graphkit nodes | onnxsim nodes | node ratio | graphkit s | "
        "onnxsim s | time ratio | graphkit max diff | onnxsim max diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print(f"node count <= onnxsim on every model: {'yes' if ok_nodes else 'NO'}")
    print(f"wall time within 1.5x of onnxsim on every model: {'yes' if ok_time else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
