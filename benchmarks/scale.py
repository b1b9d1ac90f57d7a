"""Scale: calibration and evaluation on N = 100 .. 5000 person crops, on one process,
`--workers 2` and Ray with 2 local workers, with time per sample and peak memory.

The set is COCO-MINI val2017 repeated: every image is linked again under a new COCO id
with its annotations, until there are N person crops (nothing is copied or downloaded).
Each configuration runs the real CLI in a subprocess; peak memory is the largest sum of
resident memory over the whole process tree (workers and Ray's own processes included),
sampled every 0.1 s.

    python benchmarks/scale.py                      # movenet-lightning, N = 100 1000 5000
    python benchmarks/scale.py --sizes 100 1000 --model posenet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()
CONFIGS = {
    "1 process": [],
    "--workers 2": ["--workers", "2"],
    "ray, 2 workers": ["--executor", "ray", "--workers", "2"],
}


def repeated_coco(out: Path, persons: int) -> tuple[Path, Path]:
    """An annotation file and image folder with val2017 repeated until `persons` crops."""
    src = json.loads((ASSETS / "coco-mini/annotations/person_keypoints_val2017.json").read_text())
    usable = {a["image_id"] for a in src["annotations"] if a.get("num_keypoints", 0) > 0}
    per_round = sum(
        1 for a in src["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")
    )
    rounds = -(-persons // max(per_round, 1))
    images, anns = [], []
    folder = out / "images"
    folder.mkdir()
    for r in range(rounds):
        for im in src["images"]:
            if im["id"] not in usable:
                continue
            new_id = (r + 1) * 10_000_000 + im["id"]
            name = f"{new_id:012d}.jpg"
            (folder / name).symlink_to(ASSETS / "coco-mini/val2017" / im["file_name"])
            images.append({**im, "id": new_id, "file_name": name})
        for a in src["annotations"]:
            if a["image_id"] in usable:
                anns.append(
                    {
                        **a,
                        "id": (r + 1) * 10_000_000 + a["id"],
                        "image_id": (r + 1) * 10_000_000 + a["image_id"],
                    }
                )
    ann = out / "ann.json"
    ann.write_text(json.dumps({**src, "images": images, "annotations": anns}))
    return ann, folder


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak MB of the process tree, output tail) of one CLI run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return seconds, peak[0] / 2**20, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="movenet-lightning")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    model = ASSETS / "models" / f"{args.model}.onnx"
    base = yaml.safe_load((ROOT / "examples/models" / f"{args.model}.yaml").read_text())
    graphkit = [sys.executable, "-m", "graphkit.cli"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphkit-scale-") as tmp:
        ann, images = repeated_coco(Path(tmp), max(args.sizes))
        for n in args.sizes:
            spec = dict(base)
            spec["source"] = {**base["source"], "ann": str(ann), "images": str(images), "limit": n}
            spec.pop("eval", None)
            spec_path = Path(tmp) / f"spec{n}.yaml"
            spec_path.write_text(yaml.safe_dump(spec))
            for label in args.configs:
                extra = CONFIGS[label]
                cal = [*graphkit, "calibrate", str(model), "--data", str(spec_path)]
                cal += ["--recipe", "plain", "-o", str(Path(tmp) / "plan.json"), *extra]
                t_cal, m_cal, _ = run_measured(cal)
                ev = [*graphkit, "eval", str(model), "--model-config", str(spec_path)]
                ev += ["--limit", str(n), "--json", str(Path(tmp) / "eval.json"), *extra]
                t_ev, m_ev, _ = run_measured(ev)
                ap_ = json.loads((Path(tmp) / "eval.json").read_text())["stats"]["AP"]
                row = {
                    "n": n,
                    "config": label,
                    "calibrate_s": round(t_cal, 2),
                    "calibrate_ms_per_sample": round(1000 * t_cal / n, 2),
                    "calibrate_peak_mb": round(m_cal),
                    "eval_s": round(t_ev, 2),
                    "eval_ms_per_sample": round(1000 * t_ev / n, 2),
                    "eval_peak_mb": round(m_ev),
                    "AP": round(ap_, 4),
                }
                rows.append(row)
                print(
                    f"N={n:5d} {label:16s} calibrate {t_cal:7.1f} s "
                    f"({row['calibrate_ms_per_sample']:6.1f} ms/sample, {m_cal:6.0f} MB)  "
                    f"eval {t_ev:7.1f} s ({row['eval_ms_per_sample']:6.1f} ms/sample, "
                    f"{m_ev:6.0f} MB)  AP {ap_:.4f}",
                    flush=True,
                )
    print("\nratios to 1 process (time), and peak memory at the largest N over the smallest:")
    for label in args.configs:
        for n in args.sizes:
            one = next(r for r in rows if r["n"] == n and r["config"] == "1 process")
            me = next(r for r in rows if r["n"] == n and r["config"] == label)
            print(
                f"  N={n:5d} {label:16s} calibrate x{one['calibrate_s'] / me['calibrate_s']:.2f}"
                f"  eval x{one['eval_s'] / me['eval_s']:.2f}"
            )
        lo = next(r for r in rows if r["n"] == min(args.sizes) and r["config"] == label)
        hi = next(r for r in rows if r["n"] == max(args.sizes) and r["config"] == label)
        print(
            f"  {label:16s} memory N={max(args.sizes)} / N={min(args.sizes)}: calibrate "
            f"{hi['calibrate_peak_mb'] / lo['calibrate_peak_mb']:.2f}x, eval "
            f"{hi['eval_peak_mb'] / lo['eval_peak_mb']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
