"""Peak memory of cleaning a model over 2 GB, against the model's size (target: <= 1.5x).

Builds an MLP whose weights pass protobuf's 2 GB limit (9 MatMul + Add + Relu layers of
8192 x 8192 float32, written straight to external data; Identity and Dropout nodes for
the passes to remove), then runs, each in its own process, peak RSS from the kernel:
`graphkit apply` verified and `--no-verify`; the floor any tool that loads the weights
pays (`onnx.load` + `onnx.save` with external data); and onnxsim's CLI (the peer).

    python benchmarks/big_model.py [--layers 9] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

PEAK = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    if sys.argv[0] == "--floor":
        import onnx
        m = onnx.load(sys.argv[1])
        onnx.save(m, sys.argv[2], save_as_external_data=True, location="f.onnx.data")
    else:
        runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""


def build(directory: Path, layers: int, width: int = 8192) -> Path:
    rng = np.random.default_rng(0)
    data = directory / "mlp.onnx.data"
    inits, nodes, x = [], [], "x"
    with open(data, "wb") as f:
        for i in range(layers):
            for name, shape in ((f"w{i}", (width, width)), (f"b{i}", (width,))):
                offset = f.tell()
                rows = 1024 if len(shape) == 2 else 1
                for _ in range(shape[0] // rows if len(shape) == 2 else 1):
                    part = rng.standard_normal((rows, *shape[1:]) if len(shape) == 2 else shape)
                    f.write((part / np.sqrt(width)).astype(np.float32).tobytes())
                init = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
                init.data_location = TensorProto.EXTERNAL
                length = int(np.prod(shape)) * 4
                for key, value in (("location", data.name), ("offset", offset), ("length", length)):
                    init.external_data.add(key=key, value=str(value))
                inits.append(init)
            nodes += [
                helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                helper.make_node("Identity", [f"a{i}"], [f"i{i}"]),
                helper.make_node("Relu", [f"i{i}"], [f"r{i}"]),
                helper.make_node("Dropout", [f"r{i}"], [f"d{i}"]),
            ]
            x = f"d{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def measure(argv: list[str]) -> tuple[float, int | None, str]:
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["?"])[-2:]
        return seconds, None, "failed: " + " / ".join(last)[:120]
    return seconds, int(run.stderr.split("peak")[-1]), "ok"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=9, help="8192x8192 layers (256 MB each)")
    ap.add_argument("--dir", default="/dev/shm", help="scratch folder (needs ~4x the model)")
    args = ap.parse_args()
    root = Path(args.dir) if Path(args.dir).is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="graphkit-bench-big-", dir=root))
    try:
        src = build(work, args.layers)
        size = (work / "mlp.onnx.data").stat().st_size
        pipe = work / "p.yaml"
        pipe.write_text("- cleanup\n- eliminate-nops\n- matmul-to-gemm\n")
        py = [sys.executable, "-c", PEAK]
        runs = {
            "graphkit apply (verified)": py
            + ["graphkit", "apply", str(pipe), str(src), "-o", str(work / "a.onnx")],
            "graphkit apply --no-verify": py
            + ["graphkit", "apply", str(pipe), str(src), "-o", str(work / "b.onnx"), "--no-verify"],
            "onnx.load + onnx.save (floor)": py + ["--floor", str(src), str(work / "f.onnx")],
            "onnxsim (peer)": py + ["onnxsim", str(src), str(work / "sim.onnx")],
        }
        print(f"model: {size / 2**30:.2f} GiB of weights, {args.layers} layers\n")
        print("| run | time s | peak RSS GiB | peak / model | result |")
        print("|---|---:|---:|---:|---|")
        for name, argv in runs.items():
            seconds, peak, status = measure(argv)
            gib = f"{peak / 2**30:.2f}" if peak else "-"
            ratio = f"{peak / size:.2f}x" if peak else "-"
            print(f"| {name} | {seconds:.1f} | {gib} | {ratio} | {status} |", flush=True)
            for p in work.glob("[abfs]*.onnx*"):
                p.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
