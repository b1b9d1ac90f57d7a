"""graphkit: verified ONNX graph passes, streaming int8 calibration, backend int8 tables,
per-layer diffs and COCO keypoint AP for pose networks.

    import graphkit
    model = graphkit.load_model("model.onnx")
    model, steps = graphkit.run_pipeline(model, graphkit.load_pipeline("passes.yaml"))
    plan = graphkit.quantize(model, "spec.yaml")       # every int8 decision, measured
    graphkit.export_all(plan, model, ["ncnn", "tensorrt"], "deploy/")
    result = graphkit.evaluate("model.onnx", "spec.yaml")          # COCO keypoint AP
    report = graphkit.run_diff("model.onnx", "int8.onnx", "spec.yaml")  # per tensor

Each `graphkit` command is one of these calls plus printing (docs/api.md, run as
doctests).
"""

from graphkit.errors import GraphkitError

__version__ = "0.1.0"

# everything that needs onnx loads on first use, so `import graphkit` (and
# `graphkit --help`) stays light
_LAZY = {
    "load_model": ("graphkit.model", "load_model"),
    "save_model": ("graphkit.model", "save_model"),
    "quantize": ("graphkit.quant.quantize", "quantize"),
    "Recipe": ("graphkit.quant.quantize", "Recipe"),
    "QuantPlan": ("graphkit.quant.table", "QuantPlan"),
    "export_all": ("graphkit.backends", "export_all"),
    "load_pipeline": ("graphkit.pipeline", "load_pipeline"),
    "parse_pipeline": ("graphkit.pipeline", "parse_pipeline"),
    "run_pipeline": ("graphkit.pipeline", "run_pipeline"),
    "calibrate": ("graphkit.quant.calibrate", "calibrate"),
    "evaluate": ("graphkit.evaluators.evaluate", "evaluate"),
    "run_diff": ("graphkit.evaluators.diff", "run_diff"),
    "calibrate_ncnn_model": ("graphkit.backends.ncnn.native", "calibrate_ncnn_model"),
    "write_ncnn_int8": ("graphkit.backends.ncnn.native", "write_ncnn_int8"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'graphkit' has no attribute {name!r}")


__all__ = [
    "GraphkitError",
    "QuantPlan",
    "Recipe",
    "__version__",
    "calibrate",
    "calibrate_ncnn_model",
    "evaluate",
    "export_all",
    "load_model",
    "load_pipeline",
    "parse_pipeline",
    "quantize",
    "run_diff",
    "run_pipeline",
    "save_model",
    "write_ncnn_int8",
]
