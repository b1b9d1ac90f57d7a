"""One memory arena for all onnxruntime sessions against one arena per session.

    python benchmarks/shared_arena.py [--models efficientpose posenet movenet-lightning]

Per shared model, the default plan (`graphkit.quantize(model, spec)`, what `graphkit
calibrate` runs) is made twice, each in a fresh process: with every session allocating
from the process's shared arena (`graphkit.runtime.ort.shared_arena`, the default) and
with an arena per session (onnxruntime's own default; GRAPHKIT_SHARED_ARENA=0). Prints the wall time of each, its
stages, the peak RSS of each process, the ratios, and whether the two plans are the same
(every activation, weight integer, float layer, bias and held-out score).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from heldout import MODELS, ROOT, assets

CHILD = """
import json, resource, sys, time
from graphkit.data import load_input_spec
from graphkit.model import load_model
from graphkit.quant.quantize import quantize
model = load_model(sys.argv[1])
spec = load_input_spec(sys.argv[2])
start = time.perf_counter()
plan = quantize(model, spec)
seconds = time.perf_counter() - start
stages = plan.recipe.pop("seconds")
plan.save(sys.argv[3])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "stages": stages, "peak_gb": peak}))
"""


def run(name: str, mode: str, plan: Path) -> dict:
    model = assets() / "models" / f"{name}.onnx"
    spec = ROOT / "examples" / "models" / f"{name}.yaml"
    # "own": every session keeps an arena of its own
    env = dict(os.environ, GRAPHKIT_SHARED_ARENA="0" if mode == "own" else "1")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(spec), str(plan)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    args = ap.parse_args()
    print("| model | arena | seconds | stages s | peak RSS GB |")
    print("|---|---|---|---|---|")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            got = {}
            for mode in ("own", "shared"):
                plan = Path(tmp) / f"{name}.{mode}.json"
                got[mode] = run(name, mode, plan)
                r = got[mode]
                stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
                print(
                    f"| {name} | {'one per session' if mode == 'own' else 'shared'} "
                    f"| {r['seconds']:.1f} | {stages} | {r['peak_gb']:.2f} |",
                    flush=True,
                )
            same = (Path(tmp) / f"{name}.own.json").read_text() == (
                Path(tmp) / f"{name}.shared.json"
            ).read_text()
            own, shared = got["own"], got["shared"]
            summary.append(
                f"{name}: time {own['seconds'] / shared['seconds']:.2f}x faster, peak RSS "
                f"{own['peak_gb'] / shared['peak_gb']:.2f}x lower, plans "
                + ("the same" if same else "DIFFERENT")
            )
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
