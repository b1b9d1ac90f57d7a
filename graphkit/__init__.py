"""graphkit: verified ONNX graph passes, streaming int8 calibration, backend int8 tables,
per-layer diffs and COCO keypoint AP for pose networks.

    import graphkit
    model = graphkit.load_model("model.onnx")
    plan = graphkit.quantize(model, "spec.yaml")       # every int8 decision, measured
    graphkit.export_all(plan, model, ["ncnn", "tensorrt"], "deploy/")
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
    "export_all": ("graphkit.quant.exporters", "export_all"),
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
    "export_all",
    "load_model",
    "quantize",
    "save_model",
]
