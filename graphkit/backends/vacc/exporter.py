"""VastAI vacc: a `vamc build` config and a ready calibration set.

vamc calibrates by itself (TVM-derived); no documented way of handing it external
thresholds exists, so graphkit gives it what it can use: the model, the calibration mode
closest to ours, per-channel weights, the keep-float convs as `skip_conv_layers` (indices
among the graph's Conv nodes, in graph order), keep-float MatMuls (a transformer's
Linear layers) as `skip_matmul_layers` (indices among its MatMul nodes, by analogy: the
key is seen in vamc configs, its counting is not documented) and the calibration inputs
already preprocessed as `.npz` (sampler suffix npz: vamc then needs no preprocessing config).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
import yaml

from graphkit.backends._common import ExportedFile, check_table, write_all
from graphkit.errors import GraphkitError
from graphkit.irgraph import to_ir
from graphkit.quant.table import CalibrationTable

# our method -> vamc calibrate_mode (max | percentile | kl_divergence | mse)
CALIBRATE_MODES = {
    "minmax": "max",
    "max": "max",
    "percentile": "percentile",
    "kl": "kl_divergence",
    "kl-ncnn": "kl_divergence",
    "entropy": "kl_divergence",
    "entropy-trt": "kl_divergence",
    "mse": "mse",
}
CONV_OPS = ("Conv", "ConvTranspose")


def calibrate_mode(method: str) -> str:
    mode = CALIBRATE_MODES.get(method.lower())
    if mode is None:
        # aciq / eq / omse / ... have no vamc counterpart: mse is the closest in spirit
        return "mse"
    return mode


def conv_indices(model: onnx.ModelProto, names: Iterable[str]) -> list[int]:
    """Indices (among Conv/ConvTranspose nodes, graph order) of the named nodes."""
    convs, _ = skipped_layers(model, names)
    return convs


def skipped_layers(model: onnx.ModelProto, names: Iterable[str]) -> tuple[list[int], list[int]]:
    """(skip_conv_layers, skip_matmul_layers): the named nodes' indices among the graph's
    Conv/ConvTranspose nodes and among its MatMul nodes, graph order; any other node is
    refused in one sentence."""
    graph = to_ir(model).graph
    convs = [n.name for n in graph if n.op_type in CONV_OPS]
    matmuls = [n.name for n in graph if n.op_type == "MatMul"]
    conv_out, matmul_out = [], []
    for name in names:
        if name in convs:
            conv_out.append(convs.index(name))
        elif name in matmuls:
            matmul_out.append(matmuls.index(name))
        else:
            raise GraphkitError(
                f"--keep-float layer '{name}' is neither a Conv nor a MatMul node, so vamc "
                "cannot skip it (skip_conv_layers and skip_matmul_layers count those only)"
            )
    return sorted(conv_out), sorted(matmul_out)


def build_config(
    table: CalibrationTable,
    model: onnx.ModelProto,
    *,
    checkpoint: str,
    keep_float=(),
    calib_dir: str = "./calib",
    num_samples: int = 0,
    sample_shapes: dict[str, list[int]] | None = None,
) -> dict:
    """The vamc build YAML as a dict (frontend, backend tvm_vacc int8, dataset). An input
    of variable size (a symbolic batch, as mmpose exports have) takes the shape of the
    calibration samples (`sample_shapes`), which are what vamc is given."""
    inits = {i.name for i in model.graph.initializer}
    shape = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            known = (sample_shapes or {}).get(vi.name)
            if known is None or len(known) != len(dims):
                raise GraphkitError(
                    f"input '{vi.name}' has a variable size; vamc needs a fixed frontend "
                    "shape (pass --data, whose samples fix it, or fix it with a pass)"
                )
            dims = [d if d > 0 else int(k) for d, k in zip(dims, known)]
        shape[vi.name] = dims
    mode = calibrate_mode(table.method)
    per_channel = any(len(w.amax) > 1 for w in table.weights.values()) or not table.weights
    convs, matmuls = skipped_layers(model, sorted(set(keep_float) | set(table.keep_float)))
    quantize = {
        "calibrate_mode": mode,
        "quantize_per_channel": bool(per_channel),
        "skip_conv_layers": convs,
    }
    if matmuls:
        quantize["skip_matmul_layers"] = matmuls
    return {
        "frontend": {"shape": shape, "checkpoint": checkpoint},
        "backend": {
            "type": "tvm_vacc",
            "dtype": "int8",
            "quantize": quantize,
        },
        "dataset": {
            "path": calib_dir,
            "sampler": {"suffix": "npz", "get_data_num": int(num_samples)},
        },
    }


def npz_bytes(feeds: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **feeds)  # type: ignore[arg-type]
    return buf.getvalue()


def export(
    table: CalibrationTable,
    model: onnx.ModelProto,
    out_dir: Path,
    *,
    keep_float=(),
    samples: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    max_samples: int = 200,
    **_: object,
) -> list[ExportedFile]:
    """Write `vacc/build.yaml`, `vacc/model.onnx` and `vacc/calib/NNNNN.npz` (one input
    dict per file, batch 1, exactly what the model takes)."""
    from graphkit.model import save_model

    check_table(table, model, keep_float)
    d = Path(out_dir) / "vacc"
    files: dict[Path, bytes | str] = {}
    n = 0
    shapes: dict[str, list[int]] = {}
    for feeds in samples() if samples else ():
        if n >= max_samples:
            break
        files[d / "calib" / f"{n:05d}.npz"] = npz_bytes(feeds)
        shapes = shapes or {k: list(np.shape(v)) for k, v in feeds.items()}
        n += 1
    cfg = build_config(
        table,
        model,
        checkpoint="./model.onnx",
        keep_float=keep_float,
        num_samples=n,
        sample_shapes=shapes,
    )
    files[d / "build.yaml"] = yaml.safe_dump(cfg, sort_keys=False)
    d.mkdir(parents=True, exist_ok=True)
    save_model(model, d / "model.onnx")
    write_all(files)
    out = [
        ExportedFile(
            d / "build.yaml",
            "vamc build config (tvm_vacc int8)",
            "cd vacc && vamc build build.yaml",
        ),
        ExportedFile(
            d / "model.onnx",
            "the float model vamc compiles and quantizes, int8 layers' weights snapped to the "
            "plan's grid (its per-channel absmax rounding gives the plan's integers)",
        ),
    ]
    if n:
        out.append(
            ExportedFile(d / "calib", f"{n} preprocessed calibration inputs (.npz, batch 1)")
        )
    else:
        out[0].what += "; no calibration set written (pass --data to write one)"
    return out
