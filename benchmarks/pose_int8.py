"""int8 pose accuracy and calibration time: graphkit against onnxruntime and NNCF, one run.

Per model, calibrated on the train2017 person crops of its examples/models spec (86 by
default), evaluated on the val2017 person crops (68, ground-truth boxes): COCO keypoint
AP (pycocotools) and agreement (mean OKS between the FP32 and the int8 keypoints of the
same crop, MANIFEST.md "Judging int8 accuracy"; the table gives it +- the half-width of its
95 % interval over the persons, and for every other int8 row the default's lead over it:
the default's agreement minus that row's, person by person, +- its 95 % half-width), and
the calibration time as a ratio to FP32 inference (data loading included) over the same
calibration crops:

- FP32;
- graphkit default: `graphkit.quantize(model, spec)` = `graphkit calibrate` with no flags,
  run in onnxruntime (Q/DQ; activations never negative may be uint8);
- graphkit default for ncnn: `graphkit calibrate --target ncnn` (uint8 only for the
  activations the export can shift onto ncnn's int8, float the layers ncnn has no int8
  form for), run in onnxruntime and, where pnnx converts the model, in ncnn int8 (the
  ncnn files `graphkit export --target ncnn` writes from that plan);
- the seeds' ncnn recipe: the float model converted by pnnx, ncnn2table with KL on the
  ncnn model itself and ncnn2int8 (`graphkit calibrate model.param --method kl-ncnn
  --out-dir D`), run in ncnn int8;
- graphkit with a larger float budget (`--max-float 20%`, onnxruntime), and with none
  (`--max-float 0`: every layer int8, the method, uint8 storage, weight rounding and bias
  correction still measured; the float search skipped);
- graphkit plain (`--recipe plain`: mse, nearest rounding, every layer int8);
- onnxruntime `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax),
  in a child process capped at `--mem-gb` of address space;
- NNCF `nncf.quantize` (ONNX backend, presets performance and mixed; `pip install nncf`),
  same cap; a peer that fails or is not installed is reported as such.

    python benchmarks/pose_int8.py [--models efficientpose posenet movenet-lightning]
        [--json out.json] [--no-peers] [--no-ncnn] [--mem-gb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heldout import val_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ["efficientpose", "posenet", "movenet-lightning"]
PEERS = {
    "ort-minmax": "onnxruntime quantize_static MinMax",
    "nncf-performance": "NNCF nncf.quantize (preset performance)",
    "nncf-mixed": "NNCF nncf.quantize (preset mixed)",
}


def assets() -> Path:
    return Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def spec_of(name: str, limit: int | None):
    from graphkit.data import load_input_spec

    spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
    return spec.with_source(limit=limit) if limit else spec


# ---------------------------------------------------------------------------------------
# child: one onnxruntime peer


def peer_child(peer: str, name: str, limit: int | None, out: str, mem_gb: float) -> None:
    cap = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from graphkit.data import iter_samples

    spec = spec_of(name, limit)
    model_path = str(assets() / "models" / f"{name}.onnx")
    start = time.perf_counter()
    if peer.startswith("nncf-"):
        import nncf
        import onnx

        feeds = [s.feeds for s in iter_samples(spec)]
        preset = getattr(nncf.QuantizationPreset, peer.removeprefix("nncf-").upper())
        quantized = nncf.quantize(
            onnx.load(model_path), nncf.Dataset(feeds), preset=preset, subset_size=len(feeds)
        )
        if not runs(quantized, feeds[0]):
            # NNCF's per-channel activation quantizers on depthwise convs give QLinearConv
            # a vector zero point onnxruntime refuses (MANIFEST.md): per-tensor instead
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                QuantizationParameters,
            )

            per_tensor = AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False)
            )
            quantized = nncf.quantize(
                onnx.load(model_path),
                nncf.Dataset(feeds),
                preset=preset,
                subset_size=len(feeds),
                advanced_parameters=per_tensor,
            )
            Path(out + ".note").write_text("per-tensor activations (default did not run)")
        onnx.save(quantized, out)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = (s.feeds for s in iter_samples(spec))

            def get_next(self):
                return next(self.it, None)

        quantize_static(
            model_path,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    Path(out + ".seconds").write_text(f"{time.perf_counter() - start:.3f}")


def runs(model, feeds) -> bool:
    """Whether onnxruntime loads and runs a quantized peer model."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
    except Exception:  # noqa: BLE001 - any failure means: does not run
        return False
    return True


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


def fp32_seconds(path: Path, spec) -> float:
    """FP32 inference over the calibration crops, data loading included (one session)."""
    from graphkit.data import iter_samples
    from graphkit.model import load_model
    from graphkit.runtime.ort import make_session

    sess = make_session(load_model(path))
    start = time.perf_counter()
    for s in iter_samples(spec):
        sess.run(None, s.feeds)
    return time.perf_counter() - start


def seed_ncnn_kl(name: str, model, spec, tmp: Path, score) -> None:
    """The seeds' recipe: the float model to ncnn (pnnx), then ncnn2table with KL on the
    ncnn model and ncnn2int8 (`graphkit calibrate model.param --method kl-ncnn`)."""
    from graphkit.backends.ncnn.exporter import convert_or_split
    from graphkit.backends.ncnn.native import calibrate_ncnn_model, write_ncnn_int8

    # in-graph decoding pnnx cannot convert stays a float tail, as graphkit's export does
    nm, tail = convert_or_split(model, tmp / f"{name}.seed", lambda msg: None)
    start = time.perf_counter()
    table, context = calibrate_ncnn_model(nm.param, spec, method="kl-ncnn")
    files = write_ncnn_int8(table, context, tmp / f"{name}.seed" / "int8", compare_samples=0)
    seconds = time.perf_counter() - start
    param = next(f.path for f in files if f.path.name == "model.int8.param")
    if tail is not None:
        shutil.copy(tail, param.with_name("model.tail.onnx"))
    score(param, "seed recipe: pnnx, ncnn2table KL, ncnn2int8", "ncnn int8", seconds=seconds)


NCNN_SETTING = "graphkit default --target ncnn"
DEFAULT_SETTING = "graphkit default"


def bench_model(name: str, args, tmp: Path) -> dict:
    from graphkit.backends import export_all
    from graphkit.evaluators.evaluate import agreement_details, evaluate, paired_difference
    from graphkit.model import load_model, save_model
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import quantize, recipe_of

    path = assets() / "models" / f"{name}.onnx"
    model = load_model(path)
    spec = spec_of(name, args.limit)
    val = val_args()
    rows: list[dict] = []
    t0 = time.perf_counter()
    fp = evaluate(str(path), spec, **val)
    base = fp32_seconds(path, spec)
    rows.append({"setting": "FP32", "AP": fp["stats"]["AP"], "agreement": 1.0, "seconds": base})
    print(f"{name}: FP32 AP {fp['stats']['AP']:.4f}, inference {base:.1f} s", flush=True)

    default: list[dict] = []  # the default's agreement details, once scored

    def score(model_path: Path, setting: str, backend: str = "onnxruntime", **extra) -> None:
        r = evaluate(str(model_path), spec, **val)
        row = {"setting": setting, "backend": backend, "AP": r["stats"]["AP"]}
        details = agreement_details(fp, r)
        row["agreement"] = details["agreement"]
        row["agreement95"] = details["interval95"]
        if setting == DEFAULT_SETTING and backend == "onnxruntime":
            default.append(details)
        elif default:  # the default's lead over this row, person by person
            row["default_lead"] = list(paired_difference(details, default[0]))
        rows.append({**row, **extra})
        ratio = f", calibration {extra['seconds'] / base:.2f}x FP32" if "seconds" in extra else ""
        print(
            f"{name}: {setting} [{backend}]: AP {row['AP']:.4f} agreement "
            f"{row['agreement']:.3f}{ratio}",
            flush=True,
        )

    # `graphkit calibrate --target ncnn` measures the plan as ncnn runs it (`targets`: its
    # never-negative activations uint8 only where they can be shifted onto ncnn's int8,
    # float the layers ncnn has no int8 form for): scored in onnxruntime and in ncnn
    recipes = {
        DEFAULT_SETTING: recipe_of("default"),
        NCNN_SETTING: recipe_of("default", targets=("ncnn",)),
        "graphkit --max-float 20%": recipe_of("default", max_float=0.20),
        "graphkit --max-float 0": recipe_of("default", max_float=0.0),
        "graphkit --recipe plain": recipe_of("plain"),
    }
    for setting, recipe in recipes.items():
        if setting == NCNN_SETTING and args.no_ncnn:
            continue
        start = time.perf_counter()
        plan = quantize(model, spec, recipe)
        seconds = time.perf_counter() - start
        qdq = tmp / f"{name}.{len(rows)}.onnx"
        save_model(insert_qdq(plan.deploy_model(model), plan), qdq)
        extra = {
            "seconds": seconds,
            "float_layers": plan.recipe.get("float_layers", {"count": 0}),
            "held_out": plan.recipe.get("final"),
        }
        score(qdq, setting, **extra)
        if setting == NCNN_SETTING:
            out = tmp / f"{name}.ncnn"
            try:
                export_all(plan, model, ["ncnn"], out)
            except Exception as exc:  # noqa: BLE001 - a model pnnx cannot convert
                rows.append({"setting": setting, "backend": "ncnn int8", "status": str(exc)[:120]})
                print(f"{name}: {setting} [ncnn]: {exc}", flush=True)
            else:
                score(out / "ncnn" / "model.int8.param", setting, "ncnn int8")
                seed_ncnn_kl(name, model, spec, tmp, score)
    if not args.no_peers:
        for peer, label in PEERS.items():
            out = tmp / f"{name}.{peer}.onnx"
            why = run_peer(peer, name, args.limit, out, args.mem_gb)
            note = Path(str(out) + ".note")
            if why is None:
                secs = float(Path(str(out) + ".seconds").read_text())
                if note.exists():
                    label += f", {note.read_text()}"
                try:
                    score(out, label, seconds=secs)
                except Exception as exc:  # noqa: BLE001 - a peer model onnxruntime cannot run
                    rows.append({"setting": label, "status": f"does not run: {str(exc)[:100]}"})
                    print(f"{name}: {label}: {exc}", flush=True)
            else:
                rows.append({"setting": label, "status": why})
                print(f"{name}: {label}: {why}", flush=True)
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}


def markdown(results: dict) -> str:
    lines = [
        (
            "| model | setting | backend | AP | ΔAP | agreement | default's lead, paired "
            "| float layers | calibration / FP32 |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        fp = res["rows"][0]
        for r in res["rows"]:
            if "status" in r:
                lines.append(
                    f"| {name} | {r['setting']} | {r.get('backend', '')} | {r['status']} | | | | | |"
                )
                continue
            delta = "" if r["setting"] == "FP32" else f"{r['AP'] - fp['AP']:+.4f}"
            fl = r.get("float_layers")
            kept = f"{fl['count']} of {fl['of']}" if fl and "of" in fl else ("0" if fl else "")
            ratio = f"{r['seconds'] / fp['seconds']:.1f}x" if "seconds" in r and r is not fp else ""
            agree = f"{r['agreement']:.3f}"
            if "agreement95" in r:  # the half-width of its 95 % interval over the persons
                agree += f" ±{(r['agreement95'][1] - r['agreement95'][0]) / 2:.3f}"
            lead = ""
            if "default_lead" in r:  # the default's agreement minus this row's, per person
                lead = f"{r['default_lead'][0]:+.3f} ±{r['default_lead'][1]:.3f}"
            lines.append(
                f"| {name} | {r['setting']} | {r.get('backend', 'onnxruntime')} | {r['AP']:.4f} "
                f"| {delta} | {agree} | {lead} | {kept} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--limit", type=int, help="calibration crops (default: all 86)")
    ap.add_argument("--mem-gb", type=float, default=8.0)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-ncnn", action="store_true", help="skip the ncnn int8 rows")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--child", nargs=3, metavar=("PEER", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        peer_child(args.child[0], args.child[1], args.limit, args.child[2], args.mem_gb)
        return 0
    from graphkit.runtime.int8_kernels import uint8_conv_exact

    # the uint8 rows depend on the CPU: onnxruntime saturates uint8 x int8 without VNNI
    exact = uint8_conv_exact()
    kernels = "exact" if exact else "saturating (AVX2 without VNNI)"
    print(f"onnxruntime uint8 x int8 kernels on this CPU: {kernels}", flush=True)
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results[name] = bench_model(name, args, Path(tmp))
    print()
    print(markdown(results))
    print(f"\ntotal {time.perf_counter() - start:.0f} s; uint8 kernels {kernels}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "uint8_exact": exact}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
