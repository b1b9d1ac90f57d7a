"""Huawei Ascend (ATC / AMCT): record file, quant config, Q/DQ ONNX and input-size gears.

Record file (protobuf text of AMCT's ScaleOffsetRecord), one entry per quantized node:

    record {
      key: "conv1"
      value { scale_d: 0.0212 offset_d: 0 scale_w: 0.0025 scale_w: 0.0031 offset_w: 0 offset_w: 0 }
    }

scale_d = input amax / 127 with offset_d 0 (symmetric), scale_w / offset_w repeated per
output channel (offset_w must be 0). ATC's dynamic shapes are "gears": a fixed list of
input sizes given with `--input_shape` (-1 for the free dims) and `--dynamic_image_size`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx_ir as ir

from graphkit.backends._common import (
    ExportedFile,
    check_table,
    quant_layers,
    safe_scale,
    write_all,
)
from graphkit.errors import GraphkitError
from graphkit.irgraph import to_ir
from graphkit.quant.table import QMAX, ActivationEntry, CalibrationTable, WeightEntry

MAX_GEARS = 100  # ATC accepts at most 100 gears


def _quote(name: str) -> str:
    """A protobuf text-format string literal (C escapes for quotes, backslash, controls)."""
    out = []
    for b in name.encode("utf-8"):
        c = chr(b)
        if c in "\"\\'":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _unquote(lit: str) -> str:
    body = lit[1:-1]
    raw = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt in "01234567":
                raw.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            raw += {"n": b"\n", "t": b"\t", "r": b"\r"}.get(nxt, nxt.encode())
            i += 2
        else:
            raw += c.encode("utf-8")
            i += 1
    return raw.decode("utf-8")


def _num(x: float) -> str:
    return repr(float(x))


def record_text(table: CalibrationTable, model: onnx.ModelProto, keep_float=()) -> str:
    """The AMCT record file for every quantized (node, input, weight) of the table."""
    ir_model = check_table(table, model, keep_float)
    parts = []
    for layer in quant_layers(table, ir_model, keep_float):
        ws = [safe_scale(a) for a in layer.weight_amax]
        fields = [f"scale_d: {_num(safe_scale(layer.act_amax))}", "offset_d: 0"]
        fields += [f"scale_w: {_num(s)}" for s in ws]
        fields += ["offset_w: 0"] * len(ws)
        parts.append(
            f"record {{\n  key: {_quote(layer.name)}\n  value {{ {' '.join(fields)} }}\n}}\n"
        )
    return "".join(parts)


_RECORD = re.compile(
    r'record\s*\{\s*key:\s*("(?:[^"\\]|\\.)*")\s*value\s*\{([^}]*)\}\s*\}', re.DOTALL
)


def parse_record(text: str, source: str = "record") -> dict[str, dict[str, list[float]]]:
    """Record text -> {node: {'scale_d': [...], 'offset_d': [...], 'scale_w': [...], ...}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for m in _RECORD.finditer(text):
        fields: dict[str, list[float]] = {}
        for key, val in re.findall(r"(\w+)\s*:\s*([-+0-9.eEinfa]+)", m.group(2)):
            fields.setdefault(key, []).append(float(val))
        out[_unquote(m.group(1))] = fields
    if not out and text.strip():
        raise GraphkitError(f"{source} has no 'record {{ key: ... value {{ ... }} }}' entries")
    return out


def _name(value: ir.Value | None) -> str:
    """An input's tensor name ("" for an omitted optional input)."""
    return "" if value is None else value.name or ""


def table_from_record(text: str, model: onnx.ModelProto) -> CalibrationTable:
    """A record back to a neutral table, resolving node names to their tensors in `model`."""
    nodes = {n.name: n for n in to_ir(model).graph}
    table = CalibrationTable(method="amct-record")
    for name, f in parse_record(text).items():
        node = nodes.get(name)
        if node is None:
            raise GraphkitError(f"record names node '{name}', which is not in the model")
        act = next(_name(v) for v in node.inputs if v is None or not v.is_initializer())
        weight = next(_name(v) for v in node.inputs[1:] if v is not None and v.is_initializer())
        table.activations[act] = ActivationEntry(amax=f["scale_d"][0] * QMAX)
        table.weights[weight] = WeightEntry(
            amax=[s * QMAX for s in f.get("scale_w", [])], node=name, op_type=node.op_type
        )
    return table


def quant_config(
    table: CalibrationTable, model: onnx.ModelProto, keep_float=(), batch_num: int = 2
) -> dict:
    """AMCT's quant config: every weighted layer, keep-float ones with quant_enable false."""
    ir_model = check_table(table, model, keep_float)
    skip = set(keep_float) | set(table.keep_float)
    cfg: dict = {
        "version": 1,
        "batch_num": batch_num,
        "activation_offset": False,  # graphkit's scales are symmetric (offset_d = 0)
        "do_fusion": True,
        "skip_fusion_layers": [],
    }
    names = [layer.name for layer in quant_layers(table, ir_model)]
    for name in names:
        cfg[name] = {
            "quant_enable": name not in skip,
            "activation_quant_params": {
                "num_bits": 8,
                "max_percentile": 0.999999,
                "min_percentile": 0.999999,
                "search_range": [0.7, 1.3],
                "search_step": 0.01,
                "act_algo": "ifmr",
            },
            "weight_quant_params": {
                "num_bits": 8,
                "wts_algo": "arq_quantize",
                "channel_wise": True,
            },
        }
    return cfg


def gears(
    sizes: Iterable[tuple[int, int]],
    short_side: int,
    count: int = 8,
    multiple: int = 32,
    fixed: str = "",
) -> list[tuple[int, int]]:
    """ATC gear list (h, w) for images resized so their short side is `short_side`.

    The long side of each image becomes short_side * aspect, rounded up to `multiple`;
    the gears are `count` quantiles of those long sides (each rounded up), so every image
    fits a gear with at most the padding between two neighbouring quantiles. Portrait and
    landscape images get their own gears. `fixed="h"` (or "w"): the model fixes that side
    at `short_side`, so every gear keeps it and only the other side varies.
    """
    if not 1 <= count <= MAX_GEARS:
        raise GraphkitError(f"gear count must be between 1 and {MAX_GEARS}, got {count}")
    if fixed in ("h", "w"):
        other = []
        for h, w in sizes:
            if h > 0 and w > 0:
                ratio = w / h if fixed == "h" else h / w
                other.append(max(multiple, math.ceil(short_side * ratio / multiple) * multiple))
        if not other:
            raise GraphkitError("no image sizes to compute ATC gears from")
        other.sort()
        k = min(count, len(other))
        picked = {
            other[min(len(other) - 1, math.ceil(i * len(other) / k) - 1)] for i in range(1, k + 1)
        }
        return sorted((short_side, o) if fixed == "h" else (o, short_side) for o in picked)
    land: list[int] = []
    port: list[int] = []
    for h, w in sizes:
        if h <= 0 or w <= 0:
            continue
        long = math.ceil(short_side * max(h, w) / min(h, w) / multiple) * multiple
        (land if w >= h else port).append(long)
    if not land and not port:
        raise GraphkitError("no image sizes to compute ATC gears from")
    out: set[tuple[int, int]] = set()
    total = len(land) + len(port)
    for longs, portrait in ((land, False), (port, True)):
        if not longs:
            continue
        longs.sort()
        k = max(1, round(count * len(longs) / total))
        for i in range(1, k + 1):
            q = longs[min(len(longs) - 1, math.ceil(i * len(longs) / k) - 1)]
            out.add((q, short_side) if portrait else (short_side, q))
    return sorted(out)


def input_layout(model: onnx.ModelProto) -> tuple[str, list[int], bool]:
    """(input name, dims with -1 for free ones, is NHWC) of the first graph input."""
    inits = {i.name for i in model.graph.initializer}
    vi = next(v for v in model.graph.input if v.name not in inits)
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
        for d in vi.type.tensor_type.shape.dim
    ]
    nhwc = len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3)
    return vi.name, dims, nhwc


def atc_command(
    model: onnx.ModelProto, gear_list: list[tuple[int, int]] | None, soc: str = "Ascend310P3"
) -> str:
    name, dims, nhwc = input_layout(model)
    dims = [1 if i == 0 and d == -1 else d for i, d in enumerate(dims)]
    cmd = (
        "atc --framework=5 --model=atc/model_deploy_model.onnx --output=model_int8 "
        f"--soc_version={soc} --input_format={'NHWC' if nhwc else 'NCHW'} "
        f'--input_shape="{name}:{",".join(str(d) for d in dims)}"'
    )
    if gear_list:
        cmd += ' --dynamic_image_size="' + ";".join(f"{h},{w}" for h, w in gear_list) + '"'
    return cmd


def export(
    table: CalibrationTable,
    model: onnx.ModelProto,
    out_dir: Path,
    *,
    keep_float=(),
    image_sizes: list[tuple[int, int]] | None = None,
    gear_count: int = 8,
    gear_short_side: int | None = None,
    **_: object,
) -> list[ExportedFile]:
    """Write `atc/record.txt`, `atc/quant.cfg` (JSON), `atc/model.qdq.onnx` and, for
    variable-size inputs, the gear list in `atc/gears.txt`."""
    from graphkit.backends import qdq_rules
    from graphkit.model import save_model

    record = record_text(table, model, keep_float)
    cfg = json.dumps(quant_config(table, model, keep_float), indent=2)
    qdq = qdq_rules.amct_qdq(table, model, keep_float)
    dims, nhwc = input_layout(model)[1:]
    spatial = dims[1:3] if nhwc else dims[2:4]
    gear_list = None
    files = {}
    d = Path(out_dir) / "atc"
    if len(dims) == 4 and -1 in spatial:
        if not image_sizes:
            raise GraphkitError(
                "the model has a variable input size, so ATC needs gears: pass --data so "
                "they can be computed from the images' aspect ratios"
            )
        h, w = spatial
        fixed = "h" if h > 0 else "w" if w > 0 else ""
        short = h if fixed == "h" else w if fixed == "w" else (gear_short_side or 512)
        if fixed and gear_short_side and gear_short_side != short:
            raise GraphkitError(
                f"the model fixes its input {fixed.upper()} at {short}; "
                f"--gear-short-side {gear_short_side} contradicts it"
            )
        gear_list = gears(image_sizes, short, gear_count, fixed=fixed)
        files[d / "gears.txt"] = "".join(f"{h},{w}\n" for h, w in gear_list)
    files[d / "record.txt"] = record
    files[d / "quant.cfg"] = cfg
    d.mkdir(parents=True, exist_ok=True)
    write_all(files)
    save_model(qdq, d / "model.qdq.onnx")
    save_model(model, d / "model.onnx")
    out = [
        ExportedFile(
            d / "model.qdq.onnx",
            "Q/DQ ONNX for AMCT (symmetric int8, per-channel weights only, one scale per Q/DQ pair)",
            "python -c \"import amct_onnx as amct; amct.convert_qat_model('atc/model.qdq.onnx', "
            "'atc/model', record_file='atc/record.txt')\"",
        ),
        ExportedFile(d / "record.txt", "AMCT record (ScaleOffsetRecord text, keyed by node name)"),
        ExportedFile(
            d / "model.onnx",
            "the float model for AMCT's record route: int8 layers' weights snapped to the "
            "plan's grid, so AMCT's per-channel absmax quantization gives the plan's integers",
        ),
        ExportedFile(
            d / "quant.cfg",
            "AMCT quant config JSON; --keep-float layers have quant_enable false",
        ),
    ]
    if gear_list:
        out.append(ExportedFile(d / "gears.txt", f"{len(gear_list)} ATC input-size gears (h,w)"))
    out[0].command += " && " + atc_command(qdq, gear_list)
    return out
