"""TensorRT: explicit Q/DQ ONNX, the legacy calibration cache (read and written) and the
float model snapped to the plan's grid (`export`)."""

from graphkit.backends.tensorrt.exporter import export

NAME = "tensorrt"

__all__ = ["NAME", "export"]
