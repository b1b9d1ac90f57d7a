"""The plain Q/DQ ONNX: what onnxruntime's CPU provider runs with real int8 kernels."""

from __future__ import annotations

from pathlib import Path

import onnx

from graphkit.backends._common import ExportedFile
from graphkit.quant.table import CalibrationTable


def export(
    table: CalibrationTable, model: onnx.ModelProto, out_dir: Path, *, keep_float=(), **_: object
) -> list[ExportedFile]:
    """Write `onnx/model.qdq.onnx`."""
    from graphkit.backends.qdq_rules import plain_qdq
    from graphkit.model import save_model

    qdq = plain_qdq(table, model, keep_float)
    d = Path(out_dir) / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    save_model(qdq, d / "model.qdq.onnx")
    return [
        ExportedFile(
            d / "model.qdq.onnx",
            "Q/DQ ONNX (symmetric int8, per-channel weights); onnxruntime fuses it into int8 kernels",
            "python -c \"import onnxruntime as ort; ort.InferenceSession('onnx/model.qdq.onnx')\"",
        )
    ]
