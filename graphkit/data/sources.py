"""Listing samples without decoding them: one cheap record per sample.

Each source turns its files into a list of `Item`s (image path, box, ids) by reading only
json headers and folder listings, so counting, shuffling and sharding never touch pixels.
Every problem that can be seen this early (missing files, boxes outside the image) is
raised here, before a command has written anything.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from graphkit.data.spec import InputSpec, SourceConfig
from graphkit.errors import GraphkitError
from graphkit.validation import read_json as parse_json_file

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PERSON_CATEGORY = 1
_LOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)


@dataclass(frozen=True)
class Item:
    """One sample to produce; `key` selects an array inside an npy/npz file."""

    index: int
    image_id: int
    path: str
    bbox: tuple[float, float, float, float] | None = None
    crop_box: tuple[float, float, float, float] | None = None  # bbox clipped to the image
    area: float = 0.0
    ann_id: int | None = None
    det_score: float | None = None
    key: str | int | None = None


def list_items(source: SourceConfig, input_name: str) -> list[Item]:
    """Every sample of a source, in a deterministic order (before shuffle and limit)."""
    if source.type == "coco-topdown":
        return _coco_items(source)
    if source.type == "images":
        return _image_items(source)
    return _array_items(source, input_name)


def select_items(spec: InputSpec) -> list[Item]:
    """The spec's samples after shuffle, limit and sharding; empty dataset is an error."""
    items = list_items(spec.source, spec.input.name)
    if not items:
        raise GraphkitError(f"the {spec.source.type} source {_where(spec.source)} has no samples")
    if spec.source.shuffle:
        order = np.random.default_rng(spec.source.seed).permutation(len(items))
        items = [items[i] for i in order]
    if spec.source.limit is not None:
        items = items[: spec.source.limit]
    if spec.shard_count > 1:
        items = items[spec.shard_index :: spec.shard_count]
    return items


def _where(source: SourceConfig) -> str:
    if source.type == "coco-topdown":
        return f"({source.dets or source.ann})"
    return f"({source.images or source.path})"


@lru_cache(maxsize=4)
def _read_json(path: str, mtime_ns: int, size: int) -> object:
    return parse_json_file(path, "JSON file")


def read_json(path: str, what: str) -> object:
    """Parse a json file once per process (cached by path, size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        raise GraphkitError(f"{what} {path} does not exist") from None
    if not os.path.isfile(path):
        raise GraphkitError(f"{what} {path} is not a file")
    return _read_json(path, st.st_mtime_ns, st.st_size)


def _coco_images(ann_path: str) -> tuple[dict[int, dict], list[dict]]:
    data = read_json(ann_path, "annotation file")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise GraphkitError(
            f"{ann_path} is not a COCO annotation file (no 'images' and 'annotations' lists)"
        )
    anns = data["annotations"]
    if not any(isinstance(a, dict) and "keypoints" in a for a in anns):
        raise GraphkitError(
            f"{ann_path} has no keypoint annotations (use a COCO person_keypoints json)"
        )
    try:
        images = {int(im["id"]): im for im in data["images"] if im["file_name"]}
    except (KeyError, TypeError, ValueError):
        raise GraphkitError(
            f"{ann_path} has an image entry without an integer id and a file_name"
        ) from None
    return images, anns


def _clip_box(bbox, img: dict, what: str) -> tuple[float, float, float, float]:
    """Clip [x, y, w, h] to the image as mmpose does; a box with nothing inside is an error."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise GraphkitError(f"{what} has a bbox that is not [x, y, w, h]: {bbox!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise GraphkitError(f"{what} has a bbox with NaN or inf: [{x}, {y}, {w}, {h}]")
    iw, ih = img.get("width"), img.get("height")
    if not iw or not ih:
        return (x, y, w, h)
    x1, y1 = min(max(x, 0.0), iw - 1.0), min(max(y, 0.0), ih - 1.0)
    x2, y2 = min(max(x + w, 0.0), iw - 1.0), min(max(y + h, 0.0), ih - 1.0)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise GraphkitError(
            f"{what} has box [{x:.1f}, {y:.1f}, {w:.1f}, {h:.1f}] with no area inside its "
            f"{iw}x{ih} image {img.get('file_name')}"
        )
    return (x1, y1, x2 - x1, y2 - y1)


def _gt_rows(anns: list, ann_path: str) -> list[tuple]:
    """(image_id, ann_id, bbox, area, None) for persons with keypoints, not crowds."""
    rows = []
    for n, a in enumerate(anns):
        try:
            nkp = a.get("num_keypoints")
            if nkp is None:
                nkp = int(np.count_nonzero(np.asarray(a.get("keypoints", []))[2::3]))
            if nkp <= 0 or a.get("iscrowd", 0):
                continue
            rows.append(
                (int(a["image_id"]), int(a.get("id", n)), a["bbox"], float(a.get("area", 0)), None)
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise GraphkitError(
                f"annotation {n} in {ann_path} lacks an image_id, bbox or numeric area"
            ) from None
    return rows


def _det_rows(src: SourceConfig, images: dict) -> list[tuple]:
    """(image_id, det index, bbox, box area, score) for person detections above score_thr."""
    assert src.dets is not None  # only called for a source with detections
    dets = read_json(src.dets, "detection file")
    if not isinstance(dets, list):
        raise GraphkitError(f"{src.dets} is not a COCO detection results list")
    rows = []
    for n, d in enumerate(dets):
        try:
            if d.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
                continue
            score = float(d["score"])
            if not math.isfinite(score):
                raise ValueError("a NaN or inf score")
            if score < src.score_thr:
                continue
            image_id = int(d["image_id"])
            area = float(d["bbox"][2]) * float(d["bbox"][3])
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            raise GraphkitError(
                f"detection {n} in {src.dets} lacks an image_id, a bbox [x, y, w, h] or a score"
            ) from None
        if image_id not in images:
            raise GraphkitError(
                f"detection {n} in {src.dets} is for image {image_id}, which is not in {src.ann}"
            )
        rows.append((image_id, n, d["bbox"], area, score))
    return rows


def _coco_items(src: SourceConfig) -> list[Item]:
    assert src.ann is not None and src.images is not None  # the spec requires both
    images, anns = _coco_images(src.ann)
    folder = Path(src.images)
    if not folder.is_dir():
        raise GraphkitError(f"images folder {folder} does not exist")
    rows = _gt_rows(anns, src.ann) if src.dets is None else _det_rows(src, images)
    rows.sort(key=lambda r: (r[0], r[1]))
    items: list[Item] = []
    seen: set[int] = set()
    for image_id, ident, bbox, area, score in rows:
        img = images.get(image_id)
        if img is None:
            raise GraphkitError(
                f"annotation {ident} in {src.ann} refers to image {image_id}, which it does not list"
            )
        path = str(folder / img["file_name"])
        if image_id not in seen:
            seen.add(image_id)
            if not os.path.isfile(path):
                raise GraphkitError(f"image {path} (image id {image_id}) does not exist")
        what = (
            f"detection {ident} in {src.dets}"
            if score is not None
            else f"annotation {ident} in {src.ann}"
        )
        crop_box = _clip_box(bbox, img, what)
        x, y, w, h = (float(v) for v in bbox)  # four numbers: _clip_box checked
        items.append(
            Item(
                index=len(items),
                image_id=image_id,
                path=path,
                bbox=(x, y, w, h),
                crop_box=crop_box,
                area=area,
                ann_id=None if score is not None else ident,
                det_score=score,
            )
        )
    return items


def _image_items(src: SourceConfig) -> list[Item]:
    assert src.images is not None  # the spec requires it for an images source
    folder = Path(src.images)
    if not folder.is_dir():
        raise GraphkitError(f"images folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return [
        Item(index=i, image_id=int(p.stem) if p.stem.isdigit() else i, path=str(p))
        for i, p in enumerate(files)
    ]


def _array_items(src: SourceConfig, input_name: str) -> list[Item]:
    assert src.path is not None  # the spec requires it for an npy / npz source
    path = Path(src.path)
    ext = "." + src.type
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ext and p.is_file())
        return [Item(index=i, image_id=i, path=str(p)) for i, p in enumerate(files)]
    if not path.is_file():
        raise GraphkitError(f"{src.type} source {path} does not exist")
    if src.type == "npy":
        arr = _load_array(str(path))
        return [Item(index=i, image_id=i, path=str(path), key=i) for i in range(arr.shape[0])]
    with _open_npz(str(path)) as z:
        keys = list(z.files)
        if input_name in keys:  # stacked: sample i is row i of every array
            arr = npz_array(z, input_name, str(path))
            if arr.ndim == 0:
                raise GraphkitError(
                    f"{path}: array '{input_name}' is a single number, not samples stacked "
                    "along the first axis"
                )
            n = arr.shape[0]
            return [Item(index=i, image_id=i, path=str(path), key=i) for i in range(n)]
    return [Item(index=i, image_id=i, path=str(path), key=k) for i, k in enumerate(keys)]


def _load_array(path: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS:
        raise GraphkitError(f"{path} is not a readable .npy file") from None
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise GraphkitError(f"{path} is not a .npy file holding an array (use type: npz for .npz)")
    return arr


def npz_array(z: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    """One array of an open .npz, or one sentence on why it cannot be read."""
    try:
        arr = z[key]
    except ValueError:  # object arrays need pickle, which graphkit never loads
        raise GraphkitError(
            f"{path}: array '{key}' holds Python objects (dtype object), not numbers; save "
            "numeric arrays (e.g. float32)"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError):
        raise GraphkitError(f"{path}: array '{key}' cannot be read (a damaged .npz)") from None
    return arr


def npz_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a .npz, or one sentence on why one cannot be read."""
    with _open_npz(path) as z:
        return {k: npz_array(z, k, path) for k in z.files}


def check_finite(arr: np.ndarray, where: str) -> None:
    """Refuse, in one sentence naming `where` (file and array), NaN or inf in the data: a
    model run on them measures nothing (calibration would keep no activation range)."""
    if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
        what = "NaN" if np.isnan(arr).any() else "infinite"
        raise GraphkitError(f"{where} holds {what} values; give finite input data")


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
    try:
        z = np.load(path, allow_pickle=False)
    except _LOAD_ERRORS:
        raise GraphkitError(f"{path} is not a readable .npz file") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise GraphkitError(f"{path} is not a .npz archive (use type: npy for .npy)")
    return z
