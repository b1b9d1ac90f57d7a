"""Calibration speed and memory: graphkit against onnxruntime.quantization.quantize_static.

One run, one model (efficientpose by default), the same train2017 person crops for every
peer. Each peer runs in its own child process under an address-space cap (RLIMIT_AS), so
a peer that runs out of memory is reported as such instead of taking the machine down.
Per peer: wall time (data loading + calibration + writing the quantized model), peak RSS
(ru_maxrss of that child, from wait4), at `--small` and at `--crops` crops. Plain FP32
inference over the same crops (data loading + one session + run) is the time reference,
with onnxruntime's default session (fp32) and with the non-spinning threads that
calibration sessions use (fp32-nospin): on a loaded machine spinning costs fp32 time.

onnxruntime peers: QDQ format, per-channel int8 weights, asymmetric uint8 activations
(its symmetric int8 Entropy gives the same model as MinMax, see docs/calibration.md).

    python benchmarks/calibration.py [--model efficientpose] [--crops 86] [--small 20]
        [--mem-gb 8] [--repeat N] [--peers ...] [--json results.json]

`--repeat N` runs every peer N times, interleaved round by round, and reports medians and
the ratio to FP32 inference within each round (the machine's speed drifts between runs).

`--breakdown N` instead profiles one process on N preloaded crops: where the time of a
histogram calibration goes (FP32 run, run with the calibrated tensors as outputs, numpy
histogramming per element, serial, overlapped and parallel collection).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = [
    "fp32",
    "fp32-nospin",
    "graphkit-minmax",
    "graphkit-entropy",
    "ort-minmax",
    "ort-entropy",
    "ort-percentile",
]


def assets() -> Path:
    return Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


# ---------------------------------------------------------------------------------------
# child side: one peer, prints a JSON line with its own timing
def child(peer: str, model_name: str, crops: int, out_dir: str, mem_gb: float) -> None:
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT))
    from graphkit.data import iter_samples, load_input_spec

    model_path = assets() / "models" / f"{model_name}.onnx"
    spec = load_input_spec(ROOT / "examples" / "models" / f"{model_name}.yaml").with_source(
        limit=crops
    )
    out = Path(out_dir) / f"{peer}.onnx"
    t0 = time.perf_counter()
    if peer in ("fp32", "fp32-nospin"):
        from graphkit.model import load_model
        from graphkit.runtime.ort import make_session

        # fp32-nospin: the session options calibration uses (idle threads sleep)
        sess = make_session(load_model(model_path), spin=peer == "fp32")
        n = sum(1 for s in iter_samples(spec) if sess.run(None, s.feeds) is not None)
    elif peer.startswith("graphkit-"):
        from graphkit.model import load_model, save_model
        from graphkit.quant.calibrate import calibrate
        from graphkit.quant.qdq import insert_qdq

        model = load_model(model_path)
        table = calibrate(model, spec, method=peer.split("-", 1)[1])
        table.save(Path(out_dir) / f"{peer}.json")
        save_model(insert_qdq(model, table), out)
        n = table.num_samples
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
                self.n = 0

            def get_next(self):
                feeds = next(self.it, None)
                self.n += feeds is not None
                return feeds

        method = {
            "ort-minmax": CalibrationMethod.MinMax,
            "ort-entropy": CalibrationMethod.Entropy,
            "ort-percentile": CalibrationMethod.Percentile,
        }[peer]
        reader = Reader()
        quantize_static(
            str(model_path),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
        )
        n = reader.n
    print(json.dumps({"seconds": time.perf_counter() - t0, "samples": n}), flush=True)


# ---------------------------------------------------------------------------------------
# in-process profile
def breakdown(model_name: str, crops: int) -> list[dict]:
    """Per-crop wall and CPU of each stage of histogram calibration (crops preloaded)."""
    sys.path.insert(0, str(ROOT))

    from graphkit.data import iter_samples, load_input_spec
    from graphkit.model import load_model
    from graphkit.quant.collect import Executor, collect, select_tensors
    from graphkit.quant.observers import TensorStats, compiled_kernel
    from graphkit.runtime.ort import make_session

    model = load_model(assets() / "models" / f"{model_name}.onnx")
    spec = load_input_spec(ROOT / "examples" / "models" / f"{model_name}.yaml").with_source(
        limit=crops
    )
    rows: list[dict] = []

    def timed(stage: str, fn, cpu=time.process_time) -> None:
        w0, c0 = time.perf_counter(), cpu()
        extra = fn() or {}
        wall, cpu_s = time.perf_counter() - w0, cpu() - c0
        rows.append(
            {
                "stage": stage,
                "ms_per_crop": 1e3 * wall / n,
                "cpu_ms_per_crop": 1e3 * cpu_s / n,
                **extra,
            }
        )

    n = crops
    feeds: list = []
    timed("load + preprocess crops", lambda: feeds.extend(s.feeds for s in iter_samples(spec)))
    n = len(feeds)
    names = select_tensors(model, "quantizable")
    plain = make_session(model)
    plain.run(None, feeds[0])

    def run_all(fn) -> None:
        for f in feeds:  # results dropped at once: one sample alive
            fn(f)

    timed("fp32 run (default session)", lambda: run_all(lambda f: plain.run(None, f)))
    quiet = make_session(model, spin=False)
    quiet.run(None, feeds[0])
    timed("fp32 run (threads do not spin)", lambda: run_all(lambda f: quiet.run(None, f)))
    execute = Executor(model, names, spin=False)
    elements = sum(v.size for v in execute(feeds[0]).values())
    timed("run, calibrated tensors as outputs", lambda: run_all(execute))

    def observe_only() -> dict:
        stats = {t: TensorStats() for t in names}
        hist_cpu = 0.0
        for f in feeds:
            out = execute(f)
            c0 = time.thread_time()
            for name, value in out.items():
                stats[name].update(value)
            hist_cpu += time.thread_time() - c0
        return {
            "histogram_cpu_ms_per_crop": 1e3 * hist_cpu / n,
            "ns_per_element": 1e9 * hist_cpu / (n * elements),
        }

    kernels = [("numpy", "1")] + ([("C kernel", "0")] if compiled_kernel() else [])
    for label, numpy_flag in kernels:
        os.environ["GRAPHKIT_NUMPY_HISTOGRAM"] = numpy_flag
        timed(f"run + histogram, {label} (serial)", observe_only)
        variants = [("serial", {"observers": 1}), ("overlapped", {"overlap": True})]
        if label != "numpy":  # np.bincount holds the GIL: parallel observers gain nothing
            variants.append(("parallel observers, the default", {}))
        for variant, kwargs in variants:
            timed(
                f"collect, {label}, {variant}",
                lambda kw=kwargs: collect(model, lambda: iter(feeds), names, **kw) and None,
            )  # includes building the session
    os.environ.pop("GRAPHKIT_NUMPY_HISTOGRAM")
    print(
        f"{model_name}: {n} crops, {len(names)} tensors, {elements / 1e6:.1f} M elements per crop"
    )
    for r in rows:
        more = "".join(
            f"  {k} {v:.1f}"
            for k, v in r.items()
            if k not in ("stage", "ms_per_crop", "cpu_ms_per_crop")
        )
        print(
            f"  {r['stage']:38s} {r['ms_per_crop']:7.1f} ms/crop  cpu {r['cpu_ms_per_crop']:7.1f} ms/crop{more}"
        )
    by = {r["stage"]: r for r in rows}
    if compiled_kernel():
        out_cpu = by["run, calibrated tensors as outputs"]["cpu_ms_per_crop"]
        hist_cpu = by["run + histogram, C kernel (serial)"]["histogram_cpu_ms_per_crop"]
        fp32 = min(
            by[k]["ms_per_crop"]
            for k in ("fp32 run (default session)", "fp32 run (threads do not spin)")
        )
        cores = os.cpu_count() or 1
        best = (out_cpu + hist_cpu) / cores
        print(
            f"lower bound on {cores} cores "
            f"(run with outputs {out_cpu:.0f} ms CPU + histogram {hist_cpu:.0f} ms CPU, "
            f"perfectly packed): {best:.0f} ms/crop = {best / fp32:.2f}x the faster FP32 run"
        )
    return rows


# ---------------------------------------------------------------------------------------
# parent side
def run_peer(peer: str, model: str, crops: int, mem_gb: float, timeout: float) -> dict:
    """Run one peer in a child process; its peak RSS comes from wait4 on that child."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            peer,
            "--model",
            model,
            "--crops",
            str(crops),
            "--out-dir",
            tmp,
            "--mem-gb",
            str(mem_gb),
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        start = time.perf_counter()
        with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
            proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out, err = out_path.read_text(), err_path.read_text()
    rss_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
    cpu_s = usage.ru_utime + usage.ru_stime  # robust to other jobs on the machine
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        if wall >= timeout:
            return {
                "peer": peer,
                "crops": crops,
                "status": f"timeout > {timeout:.0f} s",
                "peak_rss_mb": rss_mb,
            }
        oom = any(
            k in err for k in ("MemoryError", "bad_alloc", "Failed to allocate", "out of memory")
        )
        oom = oom or proc.returncode in (-9, -6)
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        status = f"out of memory (> {mem_gb:g} GB cap)" if oom else f"failed: {tail[:120]}"
        return {
            "peer": peer,
            "crops": crops,
            "status": status,
            "peak_rss_mb": rss_mb,
            "wall_s": wall,
        }
    info = json.loads(lines[-1])
    return {
        "peer": peer,
        "crops": crops,
        "status": "ok",
        "seconds": info["seconds"],
        "cpu_s": cpu_s,
        "samples": info["samples"],
        "peak_rss_mb": rss_mb,
        "wall_s": wall,
    }


def summarize(runs: list[dict]) -> dict | None:
    """Median time and CPU, largest peak RSS of one peer's rounds (ok only if all were)."""
    if not runs:
        return None
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        return bad[0]
    out = dict(runs[0])
    for key in ("seconds", "cpu_s", "wall_s"):
        out[key] = statistics.median(r[key] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def per_round_ratios(results: list[dict], peer: str, ref: str, crops: int) -> list[float]:
    """peer time / reference time within each round (the two ran back to back)."""
    out = []
    for r in results:
        if (r["peer"], r["crops"], r["status"]) != (peer, crops, "ok"):
            continue
        for q in results:
            if (q["peer"], q["crops"], q["round"], q["status"]) == (ref, crops, r["round"], "ok"):
                out.append(r["seconds"] / q["seconds"])
    return out


def fmt(r: dict | None) -> tuple[str, str]:
    if r is None:
        return "-", "-"
    rss = f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") else "-"
    if r["status"] != "ok":
        return r["status"], rss
    return f"{r['seconds']:.1f} s (cpu {r['cpu_s']:.1f} s)", rss


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="efficientpose")
    ap.add_argument("--crops", type=int, default=86)
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--mem-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    ap.add_argument("--json")
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds per crop count (medians are reported)"
    )
    ap.add_argument("--breakdown", type=int, metavar="N", help="profile stages on N crops")
    ap.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.crops, args.out_dir, args.mem_gb)
        return 0
    if args.breakdown:
        rows = breakdown(args.model, args.breakdown)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    results = []
    for crops in (args.small, args.crops):
        for round_ in range(args.repeat):  # peers interleaved: a load change hits them all
            for peer in args.peers:
                r = run_peer(peer, args.model, crops, args.mem_gb, args.timeout)
                r["round"] = round_
                results.append(r)
                t, rss = fmt(r)
                print(
                    f"{args.model} {crops:3d} crops  {peer:18s} {t:>28s}  peak RSS {rss}",
                    flush=True,
                )
    by = {
        (peer, crops): summarize([r for r in results if (r["peer"], r["crops"]) == (peer, crops)])
        for peer in args.peers
        for crops in (args.small, args.crops)
    }
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds:")
        for (peer, crops), r in by.items():
            t, rss = fmt(r)
            print(f"{args.model} {crops:3d} crops  {peer:18s} {t:>28s}  peak RSS {rss}")

    def val(peer, crops, key):
        r = by.get((peer, crops))
        return r.get(key) if r and r["status"] == "ok" else None

    print("\nratios at", args.crops, "crops:")
    ge_t, ge_m = (
        val("graphkit-entropy", args.crops, "seconds"),
        by.get(("graphkit-entropy", args.crops), {}).get("peak_rss_mb"),
    )
    for peer in ("ort-entropy", "ort-percentile", "ort-minmax"):
        r = by.get((peer, args.crops))
        if r is None:
            continue
        if r["status"] == "ok" and ge_t:
            print(
                f"  {peer}: time {r['seconds'] / ge_t:.1f}x graphkit-entropy, peak RSS "
                f"{r['peak_rss_mb'] / ge_m:.1f}x"
            )
        else:
            print(f"  {peer}: {r['status']} (graphkit-entropy: {ge_t:.1f} s, {ge_m:.0f} MB)")
    for ref in ("fp32", "fp32-nospin"):
        ref_t, ref_c = val(ref, args.crops, "seconds"), val(ref, args.crops, "cpu_s")
        for peer in ("graphkit-entropy", "graphkit-minmax", "ort-minmax"):
            t, c = val(peer, args.crops, "seconds"), val(peer, args.crops, "cpu_s")
            if ref_t and t:
                rounds = per_round_ratios(results, peer, ref, args.crops)
                spread = (
                    f" (per round: {', '.join(f'{x:.2f}' for x in rounds)})"
                    if len(rounds) > 1
                    else ""
                )
                print(
                    f"  {peer} / {ref} inference: wall {t / ref_t:.2f}x, cpu {c / ref_c:.2f}x{spread}"
                )
    small_m = by.get(("graphkit-entropy", args.small), {}).get("peak_rss_mb")
    if small_m and ge_m:
        print(
            f"  graphkit-entropy peak RSS {args.small} -> {args.crops} crops: {small_m:.0f} -> {ge_m:.0f} MB "
            f"({100 * (ge_m / small_m - 1):+.1f}%)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
