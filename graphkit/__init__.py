"""graphkit: verified ONNX graph passes, streaming int8 calibration, backend int8 tables,
per-layer diffs and COCO keypoint AP for pose networks."""

from graphkit.errors import GraphkitError
from graphkit.model import load_model, save_model

__version__ = "0.1.0"
__all__ = ["GraphkitError", "__version__", "load_model", "save_model"]
