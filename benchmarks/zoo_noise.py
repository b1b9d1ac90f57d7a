"""How much a random-weight zoo model amplifies tiny weight noise: is int8 judged fairly?

benchmarks/large_pose.py times calibration on benchmarks/pose_zoo.py's architectures with
seeded random weights; their held-out head SQNR says little, and nothing when the random
network is chaotic. Per architecture: every Conv / ConvTranspose / Gemm / MatMul weight
times (1 + eps N(0, 1)) (`noise_floor.perturbed`, one seed), FP32 otherwise, and the SQNR
of the outputs against the unperturbed model on the first 8 train2017 crops of its spec.
A trained network keeps tens of dB at eps = 0.1 %; a chaotic one does not.

    python benchmarks/zoo_noise.py [--models litehrnet_18 hrnet_w32] [--eps 0.001 0.003]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
from heldout import assets
from noise_floor import perturbed


def outputs(session, feeds) -> list[np.ndarray]:
    """Every output of each sample, flattened into one vector."""
    return [np.concatenate([o.ravel() for o in session.run(None, f)]) for f in feeds]


def main() -> int:
    from pose_zoo import MODELS, build

    from graphkit.data import iter_samples, load_input_spec
    from graphkit.metrics import sqnr_db
    from graphkit.model import load_model
    from graphkit.runtime.ort import make_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--eps", nargs="+", type=float, default=[0.001, 0.003])
    ap.add_argument("--dir", type=Path, help="where the models are (built there if missing)")
    args = ap.parse_args()
    assets()
    work = args.dir or Path(tempfile.mkdtemp(prefix="graphkit-zoo-noise-"))
    print("| model | weight noise (relative) | output SQNR dB against FP32 |")
    print("|---|---:|---:|")
    for name in args.models:
        path, spec = work / f"{name}.onnx", work / f"{name}.yaml"
        if not (path.exists() and spec.exists()):
            path, spec = build(name, work)
        model = load_model(path)
        feeds = [s.feeds for s in itertools.islice(iter_samples(load_input_spec(spec)), 8)]

        ref = outputs(make_session(model), feeds)
        for eps in args.eps:
            got = outputs(make_session(perturbed(model, eps)), feeds)
            signal = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
            error = sum(float(((r - g).astype(np.float64) ** 2).sum()) for r, g in zip(ref, got))
            print(f"| {name} | {eps * 100:.1f} % | {sqnr_db(signal, error):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
