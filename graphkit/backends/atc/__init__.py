"""Huawei Ascend ATC / AMCT: the quantization record, config, Q/DQ ONNX and input-size
gears (`export`)."""

from graphkit.backends.atc.exporter import export

NAME = "atc"

__all__ = ["NAME", "export"]
