"""2x3 affine transforms between original-image pixels and model-input pixels.

Every sample records `crop_to_image`, the matrix that maps a model-input pixel back to the
original image, so keypoints decoded in the crop land on the image without the decoder
knowing how the crop was made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def get_affine(
    center: Sequence[float] | np.ndarray,
    scale_wh: Sequence[float] | np.ndarray,
    out_size: Sequence[int],
) -> np.ndarray:
    """Matrix mapping image pixels to output pixels so that a `scale_wh` box around `center`
    fills an output of `out_size` = (width, height); mmpose's non-rotated warp matrix.

    The box centre lands on the output centre (out_w/2, out_h/2).
    """
    cx, cy = float(center[0]), float(center[1])
    sw, sh = float(scale_wh[0]), float(scale_wh[1])
    ow, oh = float(out_size[0]), float(out_size[1])
    if sw <= 0 or sh <= 0:
        raise ValueError(f"affine box size must be positive, got {sw}x{sh}")
    sx, sy = ow / sw, oh / sh
    return np.array(
        [[sx, 0.0, ow * 0.5 - cx * sx], [0.0, sy, oh * 0.5 - cy * sy]], dtype=np.float64
    )


def resize_affine(
    src_wh: Sequence[int], out_size: Sequence[int], letterbox: bool = True
) -> np.ndarray:
    """Matrix for resizing a whole image to `out_size` = (width, height), in cv2.resize's
    pixel-centre convention; letterbox keeps the aspect ratio and centres the image."""
    w, h = float(src_wh[0]), float(src_wh[1])
    ow, oh = float(out_size[0]), float(out_size[1])
    sx, sy = ow / w, oh / h
    if letterbox:
        sx = sy = min(sx, sy)
    ox, oy = (ow - w * sx) * 0.5, (oh - h * sy) * 0.5
    # Pixel centres: x_out + 0.5 = (x_in + 0.5) * s + offset.
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 + ox], [0.0, sy, 0.5 * sy - 0.5 + oy]], dtype=np.float64
    )


def invert_affine(M: np.ndarray) -> np.ndarray:
    """The 2x3 inverse of a 2x3 affine matrix."""
    full = np.vstack([np.asarray(M, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(pts: np.ndarray | Sequence, M: np.ndarray) -> np.ndarray:
    """Map points (..., 2) of (x, y) through a 2x3 matrix; extra columns (scores) are kept."""
    arr = np.asarray(pts, dtype=np.float64)
    xy = arr[..., :2]
    M = np.asarray(M, dtype=np.float64)
    out = xy @ M[:, :2].T + M[:, 2]
    if arr.shape[-1] > 2:
        out = np.concatenate([out, arr[..., 2:]], axis=-1)
    return out


def box_to_center_scale(
    bbox: Sequence[float], aspect: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of the crop for an [x, y, w, h] box as mmpose makes it: enlarge the
    shorter side to the model's aspect ratio (width / height), then scale by `padding`."""
    x, y, w, h = (float(v) for v in bbox)
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w * padding, h * padding])
