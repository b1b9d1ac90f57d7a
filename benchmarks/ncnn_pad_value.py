"""Why graphkit's ncnn int8 convs read shifted activations through a float Padding layer.

    python benchmarks/ncnn_pad_value.py D --model-config examples/models/posenet.yaml \\
        --fp32 $GRAPHKIT_ASSETS/models/posenet.onnx --shape 1 385 385 3

D: an ncnn export of a plan with shifted activations (`graphkit calibrate MODEL --data
SPEC -o PLAN --target ncnn --out-dir D`). Its int8 convs that pad a shifted tensor read
it through a float `Padding` layer filled with -c (x = 0). The alternative is the conv's
own `pad_value` (param 18), which ncnn's int8 path applies to the quantized input: the
pad must then be the int8 level of -c, -127. Three variants of D/ncnn/model.int8.param
(same weights), each on val2017 in ncnn int8 against FP32 in onnxruntime: agreement with
its 95 % half-width, its difference from the export person by person, and the int8 run
time (median of --runs on a random input of --shape):

- as exported (Padding layers);
- pad_value -127 in the convs: x86 ncnn's packed int8 padding sign-extends a negative
  value into 7 of every 8 channels (docs/exporters.md);
- pad_value 129: as a byte, 0x81 = -127, in every lane of x86's packed padding; in the
  unpacked path it relies on an out-of-range float-to-char conversion (undefined in C++).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from heldout import PairedWithFirst, val_args
from ncnn_speed import timed


def with_pad_value(param_text: str, value: str) -> str:
    """The param with each `<conv>_pad` Padding layer folded back into its conv as pads
    and `18=value` (layer and blob counts lowered by one each): the inverse of the
    exporter's `_padding_before`."""
    from graphkit.backends.ncnn.exporter import PAD_VALUE, PADS

    left, right, top, bottom = PADS  # the conv's keys; Padding's are 0-3: top, bottom, left, right
    conv_key = {"0": top, "1": bottom, "2": left, "3": right}
    lines = param_text.splitlines()
    pads, kept = {}, []
    for line in lines[2:]:
        f = line.split()
        if f[0] == "Padding" and f[1].endswith("_pad"):
            pads[f[5]] = (f[4], dict(p.split("=", 1) for p in f[6:]))
        else:
            kept.append(line)
    out = []
    for line in kept:
        f = line.split()
        count = int(f[2])
        if count and f[4] in pads:
            source, params = pads[f[4]]
            f[4] = source
            f += [f"{conv_key[k]}={params[k]}" for k in sorted(conv_key)]
            f.append(f"{PAD_VALUE}={value}")
        out.append(" ".join(f))
    layers, blobs = (int(x) for x in lines[1].split())
    return "\n".join([lines[0], f"{layers - len(pads)} {blobs - len(pads)}", *out]) + "\n"


def main() -> int:
    from graphkit.backends.ncnn import runtime as nc
    from graphkit.data import load_input_spec
    from graphkit.evaluators.evaluate import agreement_details, evaluate, paired_difference

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("export", type=Path, help="--out-dir of an ncnn export of a shifted plan")
    ap.add_argument("--model-config", required=True, type=Path)
    ap.add_argument("--fp32", required=True, type=Path, help="the float ONNX model")
    ap.add_argument("--shape", type=int, nargs="+", required=True, help="input shape (ONNX)")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    d = args.export / "ncnn"
    text = (d / "model.int8.param").read_text()
    if "_padded" not in text:
        print(f"ncnn_pad_value: {d} has no Padding layers before int8 convs", file=sys.stderr)
        return 2
    spec = load_input_spec(args.model_config)
    fp32 = PairedWithFirst(args.fp32, spec).fp32
    outputs = list(json.loads((d / "model.outputs.json").read_text())["outputs"].values())
    feeds = {"in0": np.random.default_rng(0).random(args.shape, dtype=np.float32)}
    print("| int8 convs pad with | agreement | against the export, paired | int8 ms |")
    print("|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, value in (
            ("a Padding layer (the export)", None),
            ("-127", "-127"),
            ("129", "129"),
        ):
            v = Path(tmp) / (value or "export")
            v.mkdir()
            for name in ("model.int8.bin", "model.outputs.json"):
                shutil.copy(d / name, v / name)
            (v / "model.int8.param").write_text(
                text if value is None else with_pad_value(text, value)
            )
            r = evaluate(str(v / "model.int8.param"), spec, backend="ncnn", **val_args())
            details = agreement_details(fp32, r)
            low, high = details["interval95"]
            versus = ""
            if first is None:
                first = details
            else:
                diff, half = paired_difference(first, details)
                versus = f"{diff:+.4f} ±{half:.4f}"
            net = nc.NcnnNet(v / "model.int8.param", v / "model.int8.bin", int8=True, threads=2)
            ms = timed(net, feeds, outputs, args.runs)
            print(
                f"| {label} | {details['agreement']:.3f} ±{(high - low) / 2:.3f} | {versus} "
                f"| {ms:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
