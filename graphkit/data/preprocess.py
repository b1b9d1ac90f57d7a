"""Pixels to tensors: one warp to the input size, then colour, normalization and layout.

The warp (crop, resize or letterbox) is a single cv2.warpAffine whose cost depends on the
output size only, so large photos cost little more than their JPEG decode.
"""

from __future__ import annotations

import cv2
import numpy as np

from graphkit.data.spec import InputConfig
from graphkit.errors import GraphkitError

NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


def read_image(path: str) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 BGR, or raise one sentence naming the file.

    A truncated JPEG or PNG is refused: the decoders fill the missing part with grey and
    only print a warning, which would calibrate on pixels no camera took."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        data = np.zeros(0, np.uint8)
    if data.size and not _complete(data.tobytes()):
        raise GraphkitError(f"image {path} is truncated (its end marker is missing)")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise GraphkitError(f"cannot read image {path} (missing, unreadable or not an image)")
    return img


def _complete(data: bytes) -> bool:
    """JPEG: an EOI marker after the last start of scan (markers cannot occur inside
    scan data; a thumbnail's EOI comes before the main scan, a camera's trailer after the
    EOI); PNG: its IEND chunk at the end. Other formats are left to the decoder."""
    if data[:2] == b"\xff\xd8":
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in data[-64:]
    return True


def warp(img: np.ndarray, M: np.ndarray, out_hw: tuple[int, int], pad_value: float) -> np.ndarray:
    """Apply a 2x3 image->output matrix with bilinear sampling and constant padding."""
    pad = float(min(max(pad_value, 0.0), 255.0))
    return cv2.warpAffine(
        img,
        np.asarray(M, dtype=np.float64),
        (int(out_hw[1]), int(out_hw[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(pad, pad, pad),
    )


def to_tensor(pixels_bgr: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """HxWx3 uint8 BGR pixels (already at the input size) -> a 1xHxWx3 or 1x3xHxW tensor.

    float32: (pixel - mean) / std, or (pixel - mean) * scale; int32/uint8: raw 0..255.
    """
    px = cv2.cvtColor(pixels_bgr, cv2.COLOR_BGR2RGB) if cfg.color == "RGB" else pixels_bgr
    if cfg.dtype == "float32":
        x = px.astype(np.float32)
        if cfg.mean is not None:
            x -= np.asarray(cfg.mean, dtype=np.float32)
        if cfg.std is not None:
            x *= np.float32(1.0) / np.asarray(cfg.std, dtype=np.float32)
        elif cfg.scale is not None:
            x *= np.float32(cfg.scale)
    else:
        x = px.astype(NUMPY_DTYPES[cfg.dtype], copy=px is pixels_bgr)
    if cfg.layout == "NCHW":
        return np.ascontiguousarray(x.transpose(2, 0, 1))[None]
    return x[None]
