"""ONNX Q/DQ for onnxruntime (`export`)."""

from graphkit.backends.onnx.exporter import export

NAME = "onnx"

__all__ = ["NAME", "export"]
