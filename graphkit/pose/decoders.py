"""Turn a pose network's raw outputs into keypoints in model-input pixels.

Every decoder returns a list of `Instance` (one for top-down models, any number for
bottom-up ones) with COCO-17 keypoints (x, y, score) in the model input's pixel frame;
the caller maps them back to the image with the crop's affine. Joints a model does not
predict are zero and flagged False in `Decoder.predicted`, so the evaluator can mark them
unlabeled in the ground truth instead of scoring them as misses.

The `decode:` section of a model config picks a decoder:

    {type: heatmap, output: NAME, layout: NCHW}                # mmpose, 1/4 resolution
    {type: heatmap-fullres, output: NAME, layout: NHWC, joint_map: {2: 6, ...}}
    {type: heatmap-offset, heatmap: NAME, offset: NAME, stride: 16, layout: NHWC}
    {type: regression-yx, output: NAME}                        # movenet (y, x, score)
    {type: regression-xy, output: NAME}                        # DeepPose / RLE (mmpose)
    {type: associative-embedding, output: NAME, layout: NCHW}  # HRNet AE, bottom-up
    {type: simcc, x: NAME, y: NAME, split_ratio: 2.0}          # RTMPose / SimCC

Common keys: `joint_map` (model joint index -> COCO-17 index; default identity for 17
joints), `score_threshold` (keypoint scores counted in the instance score, 0.2).
`flip_test: true` (heatmap and associative-embedding, 17 joints in COCO order) makes
`graphkit eval` run every input mirrored as well and combine the outputs before decoding
the way mmpose's test-time flip does: heatmaps flipped back, left/right joints swapped
and averaged (top-down heatmaps also shifted one pixel, `flip_shift: false` to not); an
AE model's flipped-back tag maps are appended as a second tag dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field, create_model

from graphkit.errors import GraphkitError
from graphkit.validation import STRICT, validate

NUM_COCO = 17
# COCO-17 joint names, in the standard order.
COCO_JOINTS = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
# mmpose's associative-embedding grouping order: head and torso first, then the limbs,
# so a person's tag is anchored by reliable joints before the hard ones join.
AE_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


@dataclass
class Instance:
    """One person: keypoints (17, 3) as x, y, score in model-input pixels, and a score."""

    keypoints: np.ndarray
    score: float


# ---------------------------------------------------------------------------- primitives


def to_nhwc(x: np.ndarray, layout: str) -> np.ndarray:
    """Drop the batch axis and return (H, W, C) whatever the model's layout."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise GraphkitError(f"decoders take batch 1, got an output of shape {x.shape}")
        x = x[0]
    if x.ndim != 3:
        raise GraphkitError(f"expected a 3-D or 4-D heatmap output, got shape {x.shape}")
    layout = layout.upper()
    if layout == "NCHW":
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    if layout == "NHWC":
        return x
    raise GraphkitError(f"decode layout must be NCHW or NHWC, not '{layout}'")


def heatmap_argmax(hm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel argmax of an (H, W, K) map: integer x, y and the peak value, each (K,)."""
    h, w, k = hm.shape
    flat = hm.reshape(h * w, k)
    idx = flat.argmax(axis=0)
    return (idx % w).astype(np.int64), (idx // w).astype(np.int64), flat[idx, np.arange(k)]


def quarter_shift(hm: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's refinement: move a quarter cell toward the higher neighbour on each axis."""
    h, w, _ = hm.shape
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)
    for j, (x, y) in enumerate(zip(xs, ys)):
        if 0 < x < w - 1:
            fx[j] += 0.25 * np.sign(hm[y, x + 1, j] - hm[y, x - 1, j])
        if 0 < y < h - 1:
            fy[j] += 0.25 * np.sign(hm[y + 1, x, j] - hm[y - 1, x, j])
    return fx, fy


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def instance_score(scores: np.ndarray, threshold: float) -> float:
    """mmpose's rescoring: mean of the keypoint scores above the threshold (0 if none)."""
    keep = scores[scores > threshold]
    return float(keep.mean()) if keep.size else 0.0


# ------------------------------------------------------------------------------ decoders


@dataclass
class Decoder:
    """A configured decoder: call it with the model outputs and the input size (H, W)."""

    type: str
    fn: Callable[[dict[str, np.ndarray], tuple[int, int]], list[np.ndarray]]
    outputs: list[str]
    num_joints: int
    joint_map: dict[int, int]
    score_threshold: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)
    # combines the outputs of the input and of the mirrored input (flip_test), or None
    flip: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]] | None = (
        None
    )

    @property
    def predicted(self) -> np.ndarray:
        """(17,) bool: COCO joints this model predicts."""
        mask = np.zeros(NUM_COCO, dtype=bool)
        mask[list(self.joint_map.values())] = True
        return mask

    def to_coco(self, joints: np.ndarray) -> np.ndarray:
        """Model joints (K, 3) -> COCO-17 (17, 3); joints the model lacks stay zero."""
        out = np.zeros((NUM_COCO, 3), dtype=np.float64)
        for m, c in self.joint_map.items():
            out[c] = joints[m]
        return out

    def __call__(
        self, outputs: dict[str, np.ndarray], input_size: tuple[int, int]
    ) -> list[Instance]:
        missing = [n for n in self.outputs if n not in outputs]
        if missing:
            raise GraphkitError(
                f"the model has no output '{missing[0]}' that the decode section names "
                f"(outputs: {', '.join(outputs)})"
            )
        people = self.fn(outputs, input_size)
        result = []
        for joints in people:
            if joints.shape[0] != self.num_joints:
                raise GraphkitError(
                    f"the {self.type} decoder found {joints.shape[0]} joints but the config "
                    f"says {self.num_joints}; check the output name and layout"
                )
            kp = self.to_coco(joints)
            result.append(Instance(kp, instance_score(kp[self.predicted, 2], self.score_threshold)))
        return result


def decode_heatmap(
    hm: np.ndarray, input_size: tuple[int, int], layout: str = "NCHW", refine: bool = True
) -> np.ndarray:
    """Heatmaps at any resolution -> (K, 3) x, y, peak in input pixels.

    mmpose convention: heatmap cell (x, y) sits at input pixel (x, y) * input/heatmap size;
    with `refine`, the peak moves a quarter cell toward its higher neighbour first.
    """
    maps = to_nhwc(hm, layout)
    xs, ys, vals = heatmap_argmax(maps)
    fx, fy = quarter_shift(maps, xs, ys) if refine else (xs.astype(float), ys.astype(float))
    h, w, _ = maps.shape
    sx, sy = input_size[1] / w, input_size[0] / h
    return np.stack([fx * sx, fy * sy, vals.astype(np.float64)], axis=1)


def decode_heatmap_offset(
    heatmap: np.ndarray, offset: np.ndarray, stride: float, layout: str = "NHWC"
) -> np.ndarray:
    """PoseNet single pose: argmax cell, position = cell * stride + offset, score = sigmoid.

    The offset map holds K y-offsets then K x-offsets, in input pixels.
    """
    hm = to_nhwc(heatmap, layout)
    off = to_nhwc(offset, layout)
    k = hm.shape[2]
    if off.shape[2] != 2 * k or off.shape[:2] != hm.shape[:2]:
        raise GraphkitError(
            f"the offset output has shape {off.shape} but the heatmap {hm.shape} needs "
            f"{2 * k} channels on the same grid"
        )
    xs, ys, logits = heatmap_argmax(hm)
    j = np.arange(k)
    py = ys * stride + off[ys, xs, j]
    px = xs * stride + off[ys, xs, j + k]
    return np.stack([px, py, sigmoid(logits)], axis=1)


def decode_regression_yx(out: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """MoveNet: (..., K, 3) rows of (y, x, score) normalized to [0, 1] of the input.

    Normalized coordinates span the input's continuous extent [0, W]; the crop affine maps
    pixel indices (pixel centres), so x_index = x * W - 0.5.
    """
    a = np.asarray(out, dtype=np.float64)
    if a.shape[-1] != 3:
        raise GraphkitError(f"regression output must end in (y, x, score), got shape {a.shape}")
    a = a.reshape(-1, 3)
    h, w = input_size
    return np.stack([a[:, 1] * w - 0.5, a[:, 0] * h - 0.5, a[:, 2]], axis=1)


def decode_regression_xy(out: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """mmpose's RegressionHead (K, 2: x, y) or RLEHead (K, 4: x, y, sigma_x, sigma_y)
    output, coordinates normalized to the input: as mmpose's RegressionLabel.decode,
    position = coordinate x input size, score = 1, or the mean of 1 - sigma over the two
    axes with sigma = sigmoid of the raw output (RLEHead applies it after `forward`,
    which is what an export holds)."""
    a = np.asarray(out, dtype=np.float64)
    if a.shape[-1] not in (2, 4):
        raise GraphkitError(
            f"a regression-xy output must end in (x, y) or (x, y, sigma_x, sigma_y), "
            f"got shape {a.shape}"
        )
    a = a.reshape(-1, a.shape[-1])
    h, w = input_size
    if a.shape[1] == 2:
        score = np.ones(len(a))
    else:
        score = (1.0 - np.clip(sigmoid(a[:, 2:4]), 0.0, 1.0)).mean(axis=1)
    return np.stack([a[:, 0] * w, a[:, 1] * h, score], axis=1)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> np.ndarray:
    """SimCC / RTMPose: one 1-D classification per joint and axis, (1, K, W * ratio) and
    (1, K, H * ratio). As mmpose's `get_simcc_maximum`: position = argmax / ratio, score =
    the mean of the two maxima, position -1 where that score is not positive."""
    x = np.asarray(simcc_x, np.float64)
    y = np.asarray(simcc_y, np.float64)
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if x.shape[0] != y.shape[0]:
        raise GraphkitError(
            f"the simcc outputs disagree on the joints: x has shape {simcc_x.shape}, "
            f"y {simcc_y.shape}"
        )
    locs = np.stack([x.argmax(axis=1), y.argmax(axis=1)], axis=1) / split_ratio
    scores = 0.5 * (x.max(axis=1) + y.max(axis=1))
    locs[scores <= 0] = -1.0
    return np.concatenate([locs, scores[:, None]], axis=1)


def heatmap_nms(hm: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Keep only local maxima of an (H, W, K) map (max-pool equality), zero elsewhere."""
    pad = kernel // 2
    padded = np.pad(hm, ((pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    h, w, _ = hm.shape
    pooled = np.full_like(hm, -np.inf)
    for dy in range(kernel):
        for dx in range(kernel):
            np.maximum(pooled, padded[dy : dy + h, dx : dx + w], out=pooled)
    return np.where(hm == pooled, hm, 0.0)


def group_by_tag(
    heatmaps: np.ndarray,
    tags: np.ndarray,
    max_people: int = 30,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    nms_kernel: int = 5,
    joint_order: tuple[int, ...] = AE_JOINT_ORDER,
    refine: bool = True,
) -> list[np.ndarray]:
    """Associative embedding: per-joint NMS and top-k, then greedy matching by tag.

    Joints are visited in `joint_order`; each candidate above the detection threshold
    joins the person whose mean tag is nearest (closest pairs first, one candidate per
    person) when that distance is under `tag_threshold`, otherwise starts a new person.
    Returns (K, 3) arrays of x, y, score in heatmap cells.
    """
    h, w, k = heatmaps.shape
    if tags.shape[:2] != (h, w) or tags.shape[2] % k:
        raise GraphkitError(f"tag maps {tags.shape} do not match heatmaps {heatmaps.shape}")
    dims = tags.shape[2] // k
    tag_of = tags.reshape(h, w, dims, k) if dims > 1 else tags[:, :, None, :]
    peaks = heatmap_nms(heatmaps, nms_kernel)
    flat = peaks.reshape(h * w, k)
    topn = min(max_people, h * w)
    # persons as arrays: joints (P, K, 3), the sum and count of their tags (mean = sum / n)
    joints_of = np.zeros((0, k, 3))
    tag_sum = np.zeros((0, dims))
    tag_n = np.zeros(0)
    for j in joint_order:
        order = np.argsort(-flat[:, j], kind="stable")[:topn]
        vals = flat[order, j]
        idx = order[vals > detection_threshold]
        if not len(idx):
            continue
        vals = flat[idx, j]
        ctags = tag_of[idx // w, idx % w, :, j]  # (C, dims)
        taken = np.zeros(len(idx), bool)
        if len(tag_n):
            means = tag_sum / tag_n[:, None]
            dist = np.linalg.norm(ctags[:, None, :] - means[None, :, :], axis=2)  # (C, P)
            ok = (dist < tag_threshold) & (joints_of[:, j, 2] == 0)[None, :]
            ci, pi = np.nonzero(ok)
            busy = np.zeros(len(tag_n), bool)
            for t in np.lexsort((pi, ci, dist[ci, pi])):  # closest pairs first
                c, p = ci[t], pi[t]
                if taken[c] or busy[p]:
                    continue
                taken[c] = busy[p] = True
                joints_of[p, j] = (idx[c] % w, idx[c] // w, vals[c])
                tag_sum[p] += ctags[c]
                tag_n[p] += 1
        new = ~taken  # every candidate no one took starts a person
        if new.any():
            fresh = np.zeros((int(new.sum()), k, 3))
            fresh[:, j] = np.stack([idx[new] % w, idx[new] // w, vals[new]], axis=1)
            joints_of = np.concatenate([joints_of, fresh])
            tag_sum = np.concatenate([tag_sum, ctags[new]])
            tag_n = np.concatenate([tag_n, np.ones(int(new.sum()))])
    persons = [{"joints": joints_of[i].copy()} for i in range(len(tag_n))]
    result = []
    for p in persons:
        joints = p["joints"]
        if refine:
            found = joints[:, 2] > 0
            xs, ys = joints[found, 0].astype(int), joints[found, 1].astype(int)
            sub = heatmaps[:, :, found]
            fx, fy = quarter_shift(sub, xs, ys)
            joints[found, 0], joints[found, 1] = fx, fy
        result.append(joints)
    return result


# --------------------------------------------------------------------------- from config

DEFAULT_LAYOUT = {
    "heatmap": "NCHW",
    "heatmap-fullres": "NHWC",
    "heatmap-offset": "NHWC",
    "associative-embedding": "NCHW",
}
TYPES = (
    "heatmap",
    "heatmap-fullres",
    "heatmap-offset",
    "regression-yx",
    "regression-xy",
    "associative-embedding",
    "simcc",
)


def _layout(value: str) -> str:
    if value.upper() not in ("NCHW", "NHWC"):
        raise ValueError(f"must be NCHW or NHWC, not '{value}'")
    return value


Layout = Annotated[str, AfterValidator(_layout)]
Positive = Annotated[float, Field(gt=0)]


@dataclass
class _Common:
    """Keys every decode type takes (checked strictly: a typo or "16" for 16 is an error)."""

    __pydantic_config__ = STRICT

    type: str
    layout: Layout | None = None
    score_threshold: Annotated[float, Field(ge=0)] = 0.2
    joint_map: dict[int, int] | None = None
    num_joints: Annotated[int, Field(ge=1, le=1000)] | None = None
    flip_test: Any = False  # checked below with its own sentence
    ncnn_outputs: dict[str, str] | None = None  # ONNX output name -> ncnn blob


@dataclass
class _Heatmap(_Common):
    output: str = ""
    refine: bool | None = None
    flip_shift: bool = True


@dataclass
class _HeatmapOffset(_Common):
    heatmap: str = ""
    offset: str = ""
    stride: Positive = 16.0


@dataclass
class _Regression(_Common):
    output: str = ""


@dataclass
class _SimCC(_Common):
    x: str = ""
    y: str = ""
    split_ratio: Positive = 2.0


@dataclass
class _AssociativeEmbedding(_Common):
    output: str = ""
    max_people: Annotated[int, Field(ge=1)] = 30
    detection_threshold: Annotated[float, Field(ge=0)] = 0.1
    tag_threshold: Positive = 1.0
    nms_kernel: Annotated[int, Field(ge=1, le=99)] = 5


# the schema of each type's decode section, as `{decode: ...}` so errors say decode.KEY
_SECTIONS = {
    kind: create_model(f"DecodeSection_{kind}", __config__=STRICT, decode=(model, ...))
    for kind, model in (
        ("heatmap", _Heatmap),
        ("heatmap-fullres", _Heatmap),
        ("heatmap-offset", _HeatmapOffset),
        ("regression-yx", _Regression),
        ("regression-xy", _Regression),
        ("associative-embedding", _AssociativeEmbedding),
        ("simcc", _SimCC),
    )
}
_REQUIRED = {"heatmap-offset": ("heatmap", "offset", "stride"), "simcc": ("x", "y")}


def check_decode_section(cfg: dict[str, Any], where: str = "the model config") -> None:
    """Refuse, in one sentence naming the key, a decode section its type cannot use:
    unknown keys, wrong types ("16" for 16), out-of-range numbers (stride 0)."""
    kind = str(cfg["type"])
    for key in _REQUIRED.get(kind, ("output",)):
        _require(cfg, key, kind)
    validate(_SECTIONS[kind], {"decode": cfg}, where)


def _require(cfg: dict[str, Any], key: str, kind: str) -> Any:
    if key not in cfg:
        raise GraphkitError(f"the decode section for type '{kind}' needs a '{key}' entry")
    return cfg[key]


COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def flip_back(maps: np.ndarray, layout: str, joints: int = NUM_COCO) -> np.ndarray:
    """Maps computed on a mirrored input, back in the input's frame: mirrored along W and
    each left/right joint channel swapped with its partner (channel c of every group of
    `joints` channels, so heatmaps and tag maps alike)."""
    nchw = layout.upper() == "NCHW"
    w_axis, c_axis = (-1, -3) if nchw else (-2, -1)
    out = np.flip(np.asarray(maps), axis=w_axis)
    perm = list(range(out.shape[c_axis]))
    for base in range(0, len(perm) - joints + 1, joints):
        for a, b in COCO_FLIP_PAIRS:
            perm[base + a], perm[base + b] = base + b, base + a
    return np.ascontiguousarray(np.take(out, perm, axis=c_axis))


def _flip_heatmaps(name: str, layout: str, shift: bool):
    def combine(plain, mirrored):
        back = flip_back(mirrored[name], layout)
        if shift:  # mmpose's shift_heatmap: the mirrored map is one pixel off
            w_axis = -1 if layout.upper() == "NCHW" else -2
            back = np.moveaxis(back, w_axis, -1).copy()
            back[..., 1:] = back[..., :-1].copy()
            back = np.moveaxis(back, -1, w_axis)
        return {**plain, name: (np.asarray(plain[name]) + back) * 0.5}

    return combine


def _flip_ae(name: str, layout: str, joints: int):
    def combine(plain, mirrored):
        c_axis = -3 if layout.upper() == "NCHW" else -1
        a, b = np.asarray(plain[name]), flip_back(mirrored[name], layout, joints)
        heat = (np.take(a, range(joints), c_axis) + np.take(b, range(joints), c_axis)) * 0.5
        tags_a = np.take(a, range(joints, 2 * joints), c_axis)
        tags_b = np.take(b, range(joints, 2 * joints), c_axis)
        return {**plain, name: np.concatenate([heat, tags_a, tags_b], axis=c_axis)}

    return combine


def build_decoder(cfg: dict[str, Any] | None, where: str = "the model config") -> Decoder:
    """A Decoder from a model config's `decode:` section (schema in this module's docstring);
    `where` names the config in errors."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise GraphkitError("the model config needs a 'decode:' section with a 'type'")
    kind = str(cfg["type"])
    if kind not in TYPES:
        raise GraphkitError(f"unknown decode type '{kind}'; choose one of {', '.join(TYPES)}")
    check_decode_section(cfg, where)
    layout = str(cfg.get("layout", DEFAULT_LAYOUT.get(kind, "NHWC")))
    threshold = float(cfg.get("score_threshold", 0.2))
    raw_map = cfg.get("joint_map")
    num_joints = int(cfg.get("num_joints", 17 if raw_map is None else 0))
    if raw_map is None:
        joint_map = {i: i for i in range(num_joints)}
    else:
        try:
            joint_map = {int(m): int(c) for m, c in dict(raw_map).items()}
        except (TypeError, ValueError):
            raise GraphkitError(
                "decode joint_map must map model joint indices to COCO indices"
            ) from None
        num_joints = num_joints or max(joint_map) + 1
    bad = [c for c in joint_map.values() if not 0 <= c < NUM_COCO]
    if bad or any(m >= num_joints or m < 0 for m in joint_map):
        raise GraphkitError("decode joint_map has an index outside the model or COCO-17 joints")

    if kind in ("heatmap", "heatmap-fullres"):
        name = _require(cfg, "output", kind)
        refine = bool(cfg.get("refine", kind == "heatmap"))

        def fn(outs, size):
            return [decode_heatmap(outs[name], size, layout, refine)]

        names = [name]
    elif kind == "heatmap-offset":
        hname, oname = _require(cfg, "heatmap", kind), _require(cfg, "offset", kind)
        stride = float(_require(cfg, "stride", kind))

        def fn(outs, size):
            return [decode_heatmap_offset(outs[hname], outs[oname], stride, layout)]

        names = [hname, oname]
    elif kind in ("regression-yx", "regression-xy"):
        name = _require(cfg, "output", kind)
        regression = decode_regression_yx if kind == "regression-yx" else decode_regression_xy

        def fn(outs, size):
            return [regression(outs[name], size)]

        names = [name]
    elif kind == "simcc":
        xname, yname = _require(cfg, "x", kind), _require(cfg, "y", kind)
        ratio = float(cfg.get("split_ratio", 2.0))

        def fn(outs, size):
            return [decode_simcc(outs[xname], outs[yname], ratio)]

        names = [xname, yname]
    else:
        name = _require(cfg, "output", kind)
        opts = {
            "max_people": int(cfg.get("max_people", 30)),
            "detection_threshold": float(cfg.get("detection_threshold", 0.1)),
            "tag_threshold": float(cfg.get("tag_threshold", 1.0)),
            "nms_kernel": int(cfg.get("nms_kernel", 5)),
        }

        def fn(outs, size):
            maps = to_nhwc(outs[name], layout)
            h, w, c = maps.shape
            if c < 2 * num_joints:
                raise GraphkitError(
                    f"an associative-embedding output needs {2 * num_joints} channels "
                    f"(heatmaps then tags), got {c}"
                )
            people = group_by_tag(maps[:, :, :num_joints], maps[:, :, num_joints:], **opts)
            sx, sy = size[1] / w, size[0] / h
            for p in people:
                p[:, 0] *= sx
                p[:, 1] *= sy
            return people

        names = [name]
    flip = None
    flip_test = cfg.get("flip_test", False)
    if not isinstance(flip_test, bool):
        raise GraphkitError(f"decode flip_test must be true or false, got {flip_test!r}")
    if flip_test:
        if kind not in ("heatmap", "associative-embedding"):
            raise GraphkitError(
                f"decode flip_test is for heatmap and associative-embedding, not {kind}"
            )
        if joint_map != {i: i for i in range(NUM_COCO)}:
            raise GraphkitError("decode flip_test needs the model's 17 joints in COCO order")
        if kind == "heatmap":
            flip = _flip_heatmaps(names[0], layout, bool(cfg.get("flip_shift", True)))
        else:
            flip = _flip_ae(names[0], layout, num_joints)
    return Decoder(kind, fn, names, num_joints, joint_map, threshold, dict(cfg), flip)
