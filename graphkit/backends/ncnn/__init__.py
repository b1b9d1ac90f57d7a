"""ncnn: pnnx conversion (`convert`), the ncnn bindings (`runtime`), the ncnn2table table and
ncnn2int8 model from a plan (`export`), and the calibration of an existing ncnn model
(`native`)."""

from graphkit.backends.ncnn.exporter import export

NAME = "ncnn"

__all__ = ["NAME", "export"]
