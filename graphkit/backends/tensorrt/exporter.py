"""TensorRT: explicit Q/DQ ONNX (primary route) and the legacy calibration cache.

Cache format (what IInt8Calibrator.writeCalibrationCache stores and TensorRT 8.x/10.x
read back, e.g. AlphaPose's `CalibrationTable`):

    TRT-101300-EntropyCalibration2
    input: 3caa54fc
    /conv1/Conv_output_0: 3d5c11b5

Header `TRT-<version>-<Algorithm>`, version major*1000+minor*100+patch before 10.0 and
major*10000+minor*100+patch from 10.0; each line `name: hex`, hex = big-endian IEEE
float32 bits of scale = amax / 127. Names may contain ': ', so a line splits at the LAST
': '. TensorRT skips a cache whose version does not match its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from pathlib import Path

import onnx
import onnx_ir as ir

from graphkit.backends._common import (
    ExportedFile,
    check_table,
    main_readers,
    safe_scale,
    write_all,
)
from graphkit.errors import GraphkitError
from graphkit.quant.table import QMAX, ActivationEntry, CalibrationTable

DEFAULT_VERSION = "10.13.0"
KNOWN_MAJORS = (7, 10)  # the releases with this cache format (header TRT-<code>-<algorithm>)
CACHE_NAME = "CalibrationTable"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
# our calibration methods -> the TensorRT calibrator whose algorithm is closest
METHOD_TO_ALGORITHM = {
    "kl": "EntropyCalibration2",
    "kl-ncnn": "EntropyCalibration2",
    "entropy": "EntropyCalibration2",
    "entropy-trt": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "max": "MinMaxCalibration",
    "percentile": "LegacyCalibration",  # TensorRT's legacy calibrator clips at a quantile
}
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def version_code(version: str) -> int:
    """'8.6.1' -> 8601, '10.13.0' -> 101300 (TensorRT changed the encoding at 10.0)."""
    parts = version.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise GraphkitError(f"TensorRT version '{version}' is not of the form MAJOR.MINOR.PATCH")
    major, minor, patch = (int(p) for p in parts + ["0"] * (3 - len(parts)))
    if not KNOWN_MAJORS[0] <= major <= KNOWN_MAJORS[1]:
        raise GraphkitError(
            f"TensorRT version '{version}' is not one whose calibration cache graphkit knows "
            f"(major {KNOWN_MAJORS[0]} to {KNOWN_MAJORS[1]}; e.g. 8.6.1, 10.13.0)"
        )
    if minor > 99 or patch > 99:
        raise GraphkitError(f"TensorRT version '{version}' has a minor or patch number above 99")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if minor > 9:
        raise GraphkitError(
            f"TensorRT version '{version}': before 10.0 the minor number is one digit"
        )
    return major * 1000 + minor * 100 + patch


def version_string(code: int) -> str:
    """Inverse of version_code: 8601 -> '8.6.1', 101300 -> '10.13.0'."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def algorithm_for(method: str) -> str:
    """The cache header algorithm matching our calibration method (Entropy2 by default)."""
    return METHOD_TO_ALGORITHM.get(method.lower(), "EntropyCalibration2")


def _check_name(name: str) -> None:
    if not name or "\n" in name or "\r" in name:
        raise GraphkitError(
            f"tensor name {name!r} cannot be written to a TensorRT cache (empty or has a line break)"
        )


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def cache_text(
    table: CalibrationTable, version: str = DEFAULT_VERSION, algorithm: str | None = None
) -> str:
    """The cache file content for every activation of the table (scale = amax / 127)."""
    algorithm = algorithm or algorithm_for(table.method)
    if algorithm not in ALGORITHMS:
        raise GraphkitError(f"unknown TensorRT calibration algorithm '{algorithm}'")
    lines = [f"TRT-{version_code(version)}-{algorithm}"]
    for name, entry in table.activations.items():
        _check_name(name)
        lines.append(f"{name}: {scale_hex(safe_scale(entry.amax))}")
    return "\n".join(lines) + "\n"


def read_cache(path: str | Path) -> CalibrationTable:
    """Turn an existing TensorRT calibration cache into a neutral table (amax = 127 * scale).

    Entries whose scale is not a positive finite number (TensorRT writes 0 for tensors it
    never saw) are left out and listed in settings['skipped'].
    """
    p = Path(path)
    if not p.is_file():
        raise GraphkitError(f"TensorRT calibration cache {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GraphkitError(f"{p} is not a text TensorRT calibration cache") from None
    return parse_cache(text, str(p))


def parse_cache(text: str, source: str = "cache") -> CalibrationTable:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    m = _HEADER.match(lines[0].rstrip("\r")) if lines else None
    if not m:
        raise GraphkitError(
            f"{source} does not start with a TensorRT cache header 'TRT-<version>-<Algorithm>'"
        )
    code, algorithm = int(m.group(1)), m.group(2)
    acts: dict[str, ActivationEntry] = {}
    skipped = []
    for n, raw in enumerate(lines[1:], start=2):
        line = raw.removesuffix("\r")
        name, sep, hexval = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{1,8}", hexval):
            raise GraphkitError(f"{source} line {n} is not 'name: hex'")
        scale = struct.unpack(">f", bytes.fromhex(hexval.zfill(8)))[0]
        if not (math.isfinite(scale) and scale > 0):
            skipped.append(name)
            continue
        acts[name] = ActivationEntry(amax=scale * QMAX)
    return CalibrationTable(
        method=f"tensorrt-{algorithm}",
        settings={"trt_version": version_string(code), "algorithm": algorithm, "skipped": skipped},
        data_source=source,
        activations=acts,
    )


def qdq_model(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """Q/DQ ONNX in TensorRT's explicit-quantization form (see qdq_rules)."""
    from graphkit.backends import qdq_rules

    return qdq_rules.tensorrt_qdq(table, model, keep_float)


def export(
    table: CalibrationTable,
    model: onnx.ModelProto,
    out_dir: Path,
    *,
    keep_float=(),
    trt_version: str = DEFAULT_VERSION,
    algorithm: str | None = None,
    **_: object,
) -> list[ExportedFile]:
    """Write `tensorrt/model.qdq.onnx` (explicit) and `tensorrt/CalibrationTable` (legacy)."""
    graph = check_table(table, model, keep_float).graph
    from graphkit.model import save_model

    d = Path(out_dir) / "tensorrt"
    kept = set(keep_float) | set(table.keep_float)
    # legacy cache: tensors consumed only by keep-float nodes are left out, so TensorRT
    # runs those nodes in float (a tensor missing from the cache is not quantized)
    if kept:
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        acts: dict[str, ActivationEntry] = {}
        for name, e in table.activations.items():
            readers = main_readers(values.get(name), graph)
            if not readers or any(u.name not in kept for u in readers):
                acts[name] = e
        cache_table = dataclasses.replace(table, activations=acts)
    else:
        cache_table = table
    text = cache_text(cache_table, trt_version, algorithm)
    qdq = qdq_model(table, model, keep_float)
    d.mkdir(parents=True, exist_ok=True)
    write_all({d / CACHE_NAME: text})
    save_model(qdq, d / "model.qdq.onnx")
    # implicit quantization takes a float model and quantizes its weights itself (per
    # channel, absmax): the deploy model's snapped weights make it land on the plan's ints
    save_model(model, d / "model.onnx")
    return [
        ExportedFile(
            d / "model.qdq.onnx",
            "explicit-quantization ONNX (Q/DQ on layer inputs, per-channel weights, residual "
            "Add quantized on its skip input only); the primary TensorRT route",
            f"trtexec --onnx={d.name}/model.qdq.onnx --int8 --fp16 --saveEngine=model.int8.engine",
        ),
        ExportedFile(
            d / CACHE_NAME,
            f"legacy calibration cache ({text.splitlines()[0]}), ONNX tensor names; "
            "for TensorRT 8.x/10.x implicit quantization (removed in TensorRT 11)",
            f"trtexec --onnx={d.name}/model.onnx --int8 --calib={d.name}/{CACHE_NAME} "
            "--saveEngine=model.int8.engine",
        ),
        ExportedFile(
            d / "model.onnx",
            "the float model for the cache route: int8 layers' weights snapped to the plan's "
            "grid, so TensorRT's own per-channel absmax quantization gives the plan's integers",
        ),
    ]
