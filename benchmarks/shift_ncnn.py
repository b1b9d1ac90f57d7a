"""What shifting a plan's uint8 activations onto ncnn's int8 buys, in ncnn itself.

For a model, its input spec and a plan whose never-negative activations are unsigned
(`graphkit calibrate MODEL --data SPEC -o PLAN --target ncnn`), the plan is exported to
ncnn twice: as graphkit exports it (the uint8 activations shifted onto int8 with the
uint8 step, `graphkit.quant.shift`) and with every activation stored signed (one bit
less, what ncnn got before). On the first `--samples` crops of the spec, each ncnn int8
model's first output against FP32 (onnxruntime) and against onnxruntime's Q/DQ model of
the same storage, as SQNR dB.

    python benchmarks/pose_zoo.py Z --only hourglass2
    graphkit calibrate Z/hourglass2.onnx --data Z/hourglass2.yaml -o Z/hg.json --target ncnn \\
        --out-dir Z/hg
    python benchmarks/shift_ncnn.py Z/hourglass2.onnx Z/hourglass2.yaml Z/hg.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from graphkit.backends import export_all
    from graphkit.backends.ncnn import runtime as nc
    from graphkit.data import iter_samples, load_input_spec
    from graphkit.metrics import sqnr_db, squared_error
    from graphkit.model import load_model
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.table import QuantPlan
    from graphkit.runtime.ort import make_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("spec")
    ap.add_argument("plan")
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    model = load_model(args.model)
    plan = QuantPlan.load(args.plan)
    samples = [
        s.feeds for s in itertools.islice(iter_samples(load_input_spec(args.spec)), args.samples)
    ]
    signed = copy.deepcopy(plan)
    signed.set_unsigned([])
    deployed = plan.deploy_model(model)
    fp32 = make_session(model)
    print(f"{len(plan.unsigned_activations())} unsigned activations in the plan")
    with tempfile.TemporaryDirectory() as tmp:
        for tag, p in (("shifted", plan), ("signed", signed)):
            out = Path(tmp) / tag
            export_all(p, model, ["ncnn"], out, samples=lambda: iter(samples))
            d = out / "ncnn"
            net = nc.NcnnNet(d / "model.int8.param", d / "model.int8.bin", int8=True)
            qdq = make_session(insert_qdq(deployed, p))
            signal = err_fp32 = err_qdq = 0.0
            for feeds in samples:
                want = fp32.run(None, feeds)[0]
                ref = qdq.run(None, feeds)[0]
                got = net.run({"in0": next(iter(feeds.values()))}, ["out0"])["out0"]
                got = got.reshape(want.shape)
                signal += float((want.astype(np.float64) ** 2).sum())
                err_fp32 += squared_error(want, got)
                err_qdq += squared_error(ref, got)
            print(
                f"{tag:8s} ncnn int8: {sqnr_db(signal, err_fp32):6.2f} dB against FP32, "
                f"{sqnr_db(signal, err_qdq):6.2f} dB against onnxruntime's Q/DQ of the plan "
                f"stored {'as uint8' if tag == 'shifted' else 'signed'}"
            )


if __name__ == "__main__":
    main()
