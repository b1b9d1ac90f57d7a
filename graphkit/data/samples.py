"""Streaming samples: one decoded image (or one array file) in memory at a time."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from graphkit.data.affine import box_to_center_scale, get_affine, invert_affine, resize_affine
from graphkit.data.preprocess import NUMPY_DTYPES, read_image, to_tensor, warp
from graphkit.data.sources import Item, _load_array, check_finite, npz_arrays, select_items
from graphkit.data.spec import InputConfig, InputSpec
from graphkit.errors import GraphkitError

T = TypeVar("T")


@dataclass
class Sample:
    """Model feeds (batch dim 1, ready to run) and where they came from.

    meta: image_id, image_path, bbox [x, y, w, h] in image pixels (None for a whole image),
    area, crop_to_image (2x3 matrix: model-input pixel -> image pixel), input_size (H, W),
    index (position in the unsharded dataset), and ann_id / det_score when known.
    """

    feeds: dict[str, np.ndarray]
    meta: dict


def count_samples(spec: InputSpec) -> int:
    """How many samples `iter_samples` yields; reads json and folder listings only."""
    return len(select_items(spec))


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced `depth` ahead in a thread: image reading and warping (which
    release the GIL in OpenCV / PIL) overlap the caller's inference. An error in the
    producer is raised here, at the item it failed on; leaving early stops the producer."""
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item: object) -> bool:
        """Queue `item` unless the consumer has left (then False)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer below
            failure.append(exc)
        put(done)

    worker = threading.Thread(target=produce, name="graphkit-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                if failure:
                    raise failure[0]
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def iter_samples(spec: InputSpec) -> Iterator[Sample]:
    """Yield the spec's samples in order, decoding one image at a time.

    Persons of the same image come one after another (unless shuffled), so each image is
    decoded once.
    """
    items = select_items(spec)
    kind = spec.source.type
    cache: dict[str, object] = {}
    for item in items:
        if kind == "coco-topdown":
            yield _topdown_sample(spec, item, _image(cache, item.path))
        elif kind == "images":
            yield _whole_image_sample(spec, item, _image(cache, item.path))
        else:
            yield _array_sample(spec.input, kind, item, cache)


def _image(cache: dict, path: str) -> np.ndarray:
    if cache.get("path") != path:
        cache.clear()
        cache["img"] = read_image(path)
        cache["path"] = path
    return cache["img"]


def _meta(item: Item, M: np.ndarray, cfg: InputConfig, area: float) -> dict:
    meta = {
        "index": item.index,
        "image_id": item.image_id,
        "image_path": item.path,
        "bbox": list(item.bbox) if item.bbox is not None else None,
        "area": float(area),
        "crop_to_image": invert_affine(M),
        "input_size": cfg.size,
    }
    if item.ann_id is not None:
        meta["ann_id"] = item.ann_id
    if item.det_score is not None:
        meta["det_score"] = item.det_score
    return meta


def _topdown_sample(spec: InputSpec, item: Item, img: np.ndarray) -> Sample:
    cfg = spec.input
    assert cfg.size is not None  # the spec requires input.size for image sources
    assert item.crop_box is not None  # every coco-topdown item has one
    h, w = cfg.size
    center, scale = box_to_center_scale(item.crop_box, w / h, spec.source.padding)
    M = get_affine(center, scale, (w, h))
    pixels = warp(img, M, (h, w), cfg.pad_value)
    meta = _meta(item, M, cfg, item.area)
    meta["crop_center"] = center.tolist()
    meta["crop_scale"] = scale.tolist()
    return Sample({cfg.name: to_tensor(pixels, cfg)}, meta)


def short_side_size(image_hw: tuple[int, int], short: int, divisor: int) -> tuple[int, int]:
    """(h, w) for an image whose short side becomes `short`: the long side keeps the
    aspect ratio, rounded up to a multiple of `divisor` (the image centred, as mmpose's
    bottom-up test does)."""
    ih, iw = image_hw
    scale = short / min(ih, iw)
    return (
        math.ceil(ih * scale / divisor) * divisor,
        math.ceil(iw * scale / divisor) * divisor,
    )


def _whole_image_sample(spec: InputSpec, item: Item, img: np.ndarray) -> Sample:
    cfg = spec.input
    assert cfg.size is not None  # the spec requires input.size for image sources
    h, w = cfg.size
    ih, iw = img.shape[:2]
    if spec.source.resize == "short-side":
        # the short side fills its (divisible) size exactly, so letterboxing into (w, h)
        # scales by short / min(ih, iw) and centres the long side
        h, w = short_side_size((ih, iw), min(cfg.size), spec.source.size_divisor)
    M = resize_affine((iw, ih), (w, h), letterbox=spec.source.resize != "stretch")
    pixels = warp(img, M, (h, w), cfg.pad_value)
    meta = _meta(item, M, cfg, iw * ih)
    meta["input_size"] = (h, w)
    return Sample({cfg.name: to_tensor(pixels, cfg)}, meta)


def _array_sample(cfg: InputConfig, kind: str, item: Item, cache: dict) -> Sample:
    source: dict[str, str] = {}  # feed name -> the array's name in the file, when they differ
    if kind == "npy":
        if item.key is None:
            arrays = {cfg.name: np.asarray(_load_array(item.path))}
        else:
            assert isinstance(item.key, int)  # a row of a stacked .npy
            arrays = {cfg.name: np.array(_load_array(item.path)[item.key : item.key + 1])}
    else:
        if cache.get("path") != item.path:
            cache.clear()
            cache["arrays"] = npz_arrays(item.path)
            cache["path"] = item.path
        z = cache["arrays"]
        if item.key is None:  # one file per sample
            if cfg.name in z:
                arrays = dict(z)
            elif len(z) == 1:
                arrays = {cfg.name: next(iter(z.values()))}
                source = {cfg.name: next(iter(z))}
            else:
                raise GraphkitError(
                    f"{item.path} holds several arrays ({', '.join(z)}) and none is named "
                    f"{cfg.name!r} after input.name"
                )
        elif isinstance(item.key, int):  # stacked arrays: row i of each
            arrays = {k: v[item.key : item.key + 1] for k, v in z.items()}
        else:
            arrays = {cfg.name: z[item.key]}
            source = {cfg.name: str(item.key)}
    row = f" (row {item.key})" if isinstance(item.key, int) else ""
    for k, v in arrays.items():  # the name the file gives each array, with the row
        name = "" if kind == "npy" else f" array '{source.get(k, k)}'"
        check_finite(np.asarray(v), f"{item.path}{name}{row}")
    feeds = {k: (_fit(v, cfg, item) if k == cfg.name else v) for k, v in arrays.items()}
    shape = feeds[cfg.name].shape
    size = cfg.size or ((shape[1], shape[2]) if cfg.layout == "NHWC" else (shape[2], shape[3]))
    ident = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    meta = _meta(item, ident, cfg, 0.0)
    meta["input_size"] = tuple(int(v) for v in size) if len(shape) == 4 else cfg.size
    return Sample(feeds, meta)


def expected_shape(cfg: InputConfig, resize: str = "letterbox") -> tuple[int | None, ...] | None:
    """The tensor shape the spec produces, or None when input.size is not given; H and W
    are None (one per image) with short-side resizing."""
    if cfg.size is None:
        return None
    h, w = (None, None) if resize == "short-side" else cfg.size
    return (1, h, w, 3) if cfg.layout == "NHWC" else (1, 3, h, w)


def _fit(arr: np.ndarray, cfg: InputConfig, item: Item) -> np.ndarray:
    """Add the batch dim if missing, check the shape, cast within the same dtype kind."""
    where = item.path + (f" [{item.key}]" if item.key is not None else "")
    want = expected_shape(cfg)
    if want is not None and arr.shape == want[1:]:
        arr = arr[None]
    elif want is None and (arr.ndim == 0 or arr.shape[0] != 1):
        arr = arr[None]  # without input.size, a leading 1 is taken as the batch dim
    if want is not None and arr.shape != want:
        raise GraphkitError(
            f"{where} has shape {'x'.join(map(str, arr.shape))} but input.size and input.layout "
            f"({cfg.layout}) want {'x'.join(map(str, want))}"
        )
    target = np.dtype(NUMPY_DTYPES[cfg.dtype])
    if arr.dtype != target:
        if not np.can_cast(arr.dtype, target, casting="same_kind"):
            raise GraphkitError(f"{where} holds {arr.dtype} values but input.dtype is {cfg.dtype}")
        arr = arr.astype(target)
    return np.ascontiguousarray(arr)
