"""Object keypoint similarity: how COCO compares two sets of keypoints of one person.

Both the AP (through pycocotools) and graphkit's FP32-vs-int8 agreement use it; the
quantizer measures its choices with the agreement, so it lives below both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphkit.errors import GraphkitError

# COCO's per-joint OKS constants (keypoint standard deviations), COCO-17 order.
COCO_SIGMAS = (
    np.array(
        [
            0.26,
            0.25,
            0.25,
            0.35,
            0.35,
            0.79,
            0.79,
            0.72,
            0.72,
            0.62,
            0.62,
            1.07,
            1.07,
            0.87,
            0.87,
            0.89,
            0.89,
        ]
    )
    / 10.0
)


def oks(a: np.ndarray, b: np.ndarray, area: float, joints: np.ndarray | None = None) -> float:
    """COCO object keypoint similarity between two (17, 2+) keypoint sets at scale `area`."""
    a = np.asarray(a, dtype=np.float64)[:, :2]
    b = np.asarray(b, dtype=np.float64)[:, :2]
    sel = np.ones(len(a), bool) if joints is None else np.asarray(joints, bool)
    var = (2 * COCO_SIGMAS[: len(a)]) ** 2
    d2 = ((a - b) ** 2).sum(axis=1)
    e = d2 / var / (float(area) + np.spacing(1)) / 2
    return float(np.exp(-e[sel]).mean()) if sel.any() else 0.0


def half_width95(scores: Sequence[float]) -> float:
    """1.96 standard errors of the mean of `scores` (0 for fewer than two): the half-width
    of the mean's 95 % interval, normal approximation. An agreement is a mean over persons
    or crops; on a few dozen of them it is known to about +-0.01, on 8 to about +-0.05."""
    if len(scores) < 2:
        return 0.0
    return 1.96 * float(np.std(scores, ddof=1)) / float(np.sqrt(len(scores)))


def agreement(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    areas: Sequence[float],
    joints: Sequence[bool] | None = None,
) -> float:
    """Mean OKS between two models' keypoints for the same crops (1.0 = identical).

    pred_a, pred_b: (N, 17, 2+) image-pixel keypoints; areas: the ground-truth areas used
    as the OKS scale; joints: which COCO joints the models predict (default all).
    """
    pa, pb = np.asarray(pred_a), np.asarray(pred_b)
    if pa.shape != pb.shape or len(pa) != len(areas):
        raise GraphkitError(
            f"agreement needs matching predictions, got {pa.shape}, {pb.shape} and "
            f"{len(areas)} areas"
        )
    if not len(pa):
        raise GraphkitError("agreement needs at least one prediction")
    m = None if joints is None else np.asarray(joints, bool)
    return float(np.mean([oks(x, y, s, m) for x, y, s in zip(pa, pb, areas)]))


__all__ = ["COCO_SIGMAS", "agreement", "half_width95", "oks"]
