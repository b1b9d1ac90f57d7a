"""ncnn fp32 against ncnn int8 run time of exported models, on this CPU.

An ncnn export (`graphkit export PLAN MODEL --target ncnn --out-dir D --data SPEC`) holds
the fp32 model pnnx converted (`D/ncnn/model.ncnn.param`) and the int8 one graphkit wrote
(`D/ncnn/model.int8.param`). Per export directory: both run on the same random input of
`--shape` (`model.outputs.json` beside them names the outputs), after one warm-up run;
the median over `--runs` of the time to the outputs.

    python benchmarks/ncnn_speed.py D1 [D2 ...] [--runs 10] [--threads 2] [--shape 1 3 256 192]

The pose_zoo transformers, for example (their token Linears int8 as InnerProduct):

    python benchmarks/pose_zoo.py Z --only vitpose_s rtmpose_s
    graphkit calibrate Z/vitpose_s.onnx --data Z/vitpose_s.yaml -o Z/vit.json \\
        --target ncnn --out-dir Z/vit
    python benchmarks/ncnn_speed.py Z/vit
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def timed(net, feeds: dict[str, np.ndarray], outputs: list[str], runs: int) -> float:
    """Median milliseconds of `runs` runs after one warm-up."""
    net.run(feeds, outputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        net.run(feeds, outputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    from graphkit.backends.ncnn import runtime as nc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("exports", nargs="+", type=Path, help="--out-dir of an ncnn export")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--shape",
        type=int,
        nargs="+",
        default=[1, 3, 256, 192],
        help="the model's input shape as ONNX has it (default 1 3 256 192, pose_zoo's)",
    )
    args = ap.parse_args()
    print("| export | input | int8 layers | fp32 ms | int8 ms | int8 / fp32 |")
    print("|---|---|---|---|---|---|")
    for export in args.exports:
        d = export / "ncnn"
        if not (d / "model.int8.param").is_file():
            print(f"ncnn_speed: {d} holds no model.int8.param", file=sys.stderr)
            return 2
        outputs = list(json.loads((d / "model.outputs.json").read_text())["outputs"].values())
        fp32 = nc.NcnnNet(d / "model.ncnn.param", d / "model.ncnn.bin", threads=args.threads)
        int8 = nc.NcnnNet(
            d / "model.int8.param", d / "model.int8.bin", int8=True, threads=args.threads
        )
        layers = sum(1 for lay in nc.read_param(d / "model.int8.param").layers if lay.int8_term)
        shape = args.shape
        rng = np.random.default_rng(0)
        feeds = {"in0": rng.random(shape, dtype=np.float32)}
        a = timed(fp32, feeds, outputs, args.runs)
        b = timed(int8, feeds, outputs, args.runs)
        size = "x".join(str(s) for s in shape)
        print(f"| {export} | {size} | {layers} | {a:.1f} | {b:.1f} | {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
