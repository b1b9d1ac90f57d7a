"""COCO keypoint AP (pycocotools) and the FP32-vs-int8 agreement score.

AP is computed by pycocotools itself on COCO-format results; graphkit only prepares the
inputs: ground truth with the joints a model does not predict marked unlabeled (v=0,
num_keypoints recomputed), and results scored the mmpose way (mean keypoint score above a
threshold, times the box score).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphkit.errors import GraphkitError, InputError
from graphkit.pose.oks import COCO_SIGMAS, agreement, oks  # noqa: F401 - COCO's names
from graphkit.validation import read_json

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def load_annotations(path: str | Path) -> dict[str, Any]:
    """Read a COCO person-keypoints annotation file, or say in one sentence why not."""
    p = Path(path)
    if not p.is_file():
        raise GraphkitError(f"annotation file {p} does not exist")
    try:
        data = read_json(p, "annotation file")
    except InputError as exc:
        if "not valid JSON" in str(exc):
            raise InputError(f"annotation file {p} is not JSON") from None
        raise
    check_annotations(data, str(p))
    return data


def check_annotations(data: Any, source: str = "annotations") -> None:
    """Refuse files that cannot give keypoint AP: not COCO, or persons without keypoints."""
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise GraphkitError(f"{source} is not a COCO annotation file (no images/annotations)")
    anns = data["annotations"]
    if not isinstance(anns, list) or not any(
        isinstance(a, dict) and a.get("keypoints") for a in anns
    ):
        raise GraphkitError(
            f"{source} has no keypoint annotations; use a person_keypoints_*.json file"
        )
    for n, a in enumerate(anns):
        if isinstance(a, dict):
            _check_numbers(a.get("bbox"), 4, f"annotation {n} in {source}", "bbox [x, y, w, h]")
            if "area" in a:
                _check_numbers([a["area"]], 1, f"annotation {n} in {source}", "area")


def _check_numbers(values: Any, count: int | None, what: str, key: str) -> None:
    """Refuse, in one sentence, a `key` of `what` that is not `count` finite numbers (a
    missing key is left to whoever needs it)."""
    if values is None:
        return
    ok = isinstance(values, list) and (count is None or len(values) == count)
    if ok and not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise GraphkitError(f"{what} has a {key} with NaN, inf or a non-number: {values!r}")
    if not ok:
        raise GraphkitError(f"{what} has a {key} that is not {count} numbers: {values!r}")


def mask_unpredicted(gt: dict[str, Any], predicted: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """A copy of the ground truth where joints the model lacks are unlabeled (v=0).

    num_keypoints is recomputed, so persons left with no labeled joint are ignored by
    COCOeval exactly as unlabeled persons are.
    """
    mask = np.asarray(predicted, dtype=bool)
    if mask.all():
        return gt
    out = copy.deepcopy(gt)
    for ann in out["annotations"]:
        kp = ann.get("keypoints")
        if not kp:
            continue
        kp = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
        kp[~mask[: len(kp)]] = 0
        ann["keypoints"] = [int(v) if float(v).is_integer() else float(v) for v in kp.ravel()]
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
    return out


def rescore(keypoint_scores: np.ndarray, box_score: float, threshold: float = 0.2) -> float:
    """mmpose's instance score: mean keypoint score above `threshold`, times the box score."""
    s = np.asarray(keypoint_scores, dtype=np.float64)
    keep = s[s > threshold]
    return float(keep.mean() * box_score) if keep.size else 0.0


def make_result(image_id: int, keypoints: np.ndarray, score: float) -> dict[str, Any]:
    """One COCO keypoint result: keypoints (17, 3) x, y, score in image pixels."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    return {
        "image_id": int(image_id),
        "category_id": 1,
        "keypoints": [round(float(v), 3) for v in kp.ravel()],
        "score": float(score),
    }


def keypoint_ap(
    gt: dict[str, Any], results: list[dict[str, Any]], image_ids=None
) -> dict[str, float]:
    """pycocotools keypoint evaluation; returns AP, AP50, AP75, APm, APl, AR, AR50, ...

    image_ids restricts the evaluation (e.g. to the images actually run with --limit).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        # pycocotools writes into annotation dicts (gt 'ignore', results 'id'/'area'/'bbox')
        # but never into their lists: a copy of each dict keeps the caller's data intact
        # at a fraction of a deepcopy (50 ms of a 0.6 s movenet eval)
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.dataset.setdefault("categories", [{"id": 1, "name": "person"}])
        coco_gt.createIndex()
        if not results:
            return {k: 0.0 for k in STAT_NAMES}
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def oks_nms(instances: list[dict[str, Any]], threshold: float = 0.9) -> list[int]:
    """Indices kept by greedy OKS non-maximum suppression (mmpose's, for detected boxes):
    highest score first; drop any instance whose OKS with a kept one exceeds `threshold`.

    instances: dicts with keypoints (17, 3), score, area.
    """
    order = sorted(range(len(instances)), key=lambda i: -instances[i]["score"])
    keep: list[int] = []
    for i in order:
        a = instances[i]
        if all(
            oks(a["keypoints"], instances[j]["keypoints"], instances[j]["area"]) <= threshold
            for j in keep
        ):
            keep.append(i)
    return sorted(keep)
