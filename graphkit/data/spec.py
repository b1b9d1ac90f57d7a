"""The YAML input spec: how images become model inputs, one file for every command.

A spec has three sections: `input` (what the model wants: name, size, layout, dtype and
normalization), `source` (where the samples come from) and an optional `decode` that is
passed through untouched for the evaluators. Loading validates everything up front so a
typo fails in one sentence before any image is read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from graphkit.errors import GraphkitError

DEFAULT_ASSETS = "../shared/assets"
SOURCE_TYPES = ("coco-topdown", "images", "npy", "npz")
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float32", "int32", "uint8")
COLORS = ("RGB", "BGR")
# short-side: the image's short side to min(input.size), the long side following the
# aspect ratio, both rounded up to source.size_divisor (mmpose's bottom-up test geometry)
RESIZE_MODES = ("letterbox", "stretch", "short-side")
PATH_KEYS = ("ann", "images", "dets", "path")

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class InputConfig:
    """What the model's input wants; `size` is (height, width)."""

    name: str
    size: tuple[int, int] | None = None
    layout: str = "NHWC"
    dtype: str = "float32"
    color: str = "RGB"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    pad_value: float = 0.0


@dataclass(frozen=True)
class SourceConfig:
    """Where samples come from; paths are absolute once the spec is loaded."""

    type: str
    ann: str | None = None
    images: str | None = None
    dets: str | None = None
    path: str | None = None
    score_thr: float = 0.5
    padding: float = 1.25
    resize: str = "letterbox"
    size_divisor: int = 32  # short-side resize: both sides rounded up to a multiple of this
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0


@dataclass(frozen=True)
class InputSpec:
    """A loaded, validated input spec; `shard_*` select a deterministic part of it."""

    input: InputConfig
    source: SourceConfig
    decode: dict | None = None
    origin: str | None = None
    # the `eval:` section: the annotated split `graphkit eval` scores ({ann, images, dets})
    evaluation: dict | None = None
    shard_index: int = 0
    shard_count: int = 1

    @property
    def input_name(self) -> str:
        return self.input.name

    def describe(self) -> dict:
        """A JSON-ready summary of where the data comes from, for tables and reports."""
        src = {k: v for k, v in dataclasses.asdict(self.source).items() if v is not None}
        if self.origin:
            src["spec"] = self.origin
        if self.shard_count > 1:
            src["shard"] = f"{self.shard_index}/{self.shard_count}"
        return src

    def with_source(self, **overrides: Any) -> InputSpec:
        """A copy with some source keys replaced (e.g. ann=..., images=..., limit=...);
        relative paths here resolve against the current directory, as on a command line."""
        known = {f.name for f in dataclasses.fields(SourceConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise GraphkitError(
                f"unknown source key(s) {', '.join(bad)}; known keys are {', '.join(sorted(known))}"
            )
        merged = dataclasses.asdict(self.source)
        for key, value in overrides.items():
            if key in PATH_KEYS and value is not None:
                value = _resolve_path(_expand(str(value), f"source.{key}"), Path.cwd())
            merged[key] = value
        source = _validate_source(merged, Path.cwd(), False)
        _check_combination(self.input, source)
        return dataclasses.replace(self, source=source)


def load_input_spec(
    path_or_dict: str | os.PathLike | dict, base_dir: str | os.PathLike | None = None
) -> InputSpec:
    """Read and validate a spec from a YAML file or a dict; GraphkitError on any mistake.

    Relative paths resolve against `base_dir`, else the spec file's folder, else the cwd.
    """
    origin = None
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        p = Path(path_or_dict)
        if not p.is_file():
            raise GraphkitError(f"input spec {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise GraphkitError(f"input spec {p} is not valid YAML{line}") from None
        base = Path(base_dir) if base_dir is not None else p.resolve().parent
        origin = str(p)
    if not isinstance(raw, dict):
        raise GraphkitError("an input spec must be a mapping with 'input' and 'source' sections")
    _only_keys(raw, {"input", "source", "decode", "eval"}, "the input spec")
    for section in ("input", "source"):
        if not isinstance(raw.get(section), dict):
            raise GraphkitError(f"the input spec needs a '{section}:' section (a mapping)")
    decode = raw.get("decode")
    if decode is not None and not isinstance(decode, dict):
        raise GraphkitError("the input spec's 'decode:' section must be a mapping")
    cfg = _validate_input(raw["input"])
    source = _validate_source(raw["source"], base.resolve(), True)
    _check_combination(cfg, source)
    evaluation = _validate_eval(raw.get("eval"), base.resolve())
    return InputSpec(input=cfg, source=source, decode=decode, origin=origin, evaluation=evaluation)


def _validate_eval(raw: Any, base: Path) -> dict | None:
    """The `eval:` section: paths of the split to score (ann and images, dets optional)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise GraphkitError("the input spec's 'eval:' section must be a mapping")
    _only_keys(raw, {"ann", "images", "dets"}, "the 'eval:' section")
    out = {}
    for key in ("ann", "images", "dets"):
        v = raw.get(key)
        if v is None or v == "":
            continue
        if not isinstance(v, (str, os.PathLike)):
            raise GraphkitError(f"eval.{key} must be a path, got {v!r}")
        out[key] = _resolve_path(_expand(str(v), f"eval.{key}"), base)
    if "ann" not in out or "images" not in out:
        raise GraphkitError("the 'eval:' section needs ann and images")
    return out


def _check_combination(cfg: InputConfig, source: SourceConfig) -> None:
    if source.type in ("coco-topdown", "images") and cfg.size is None:
        raise GraphkitError(f"a {source.type} source needs input.size: [height, width]")
    if source.resize == "short-side":
        if source.type != "images":
            raise GraphkitError(
                "source.resize: short-side resizes whole images (source.type: images); "
                f"a {source.type} source makes fixed-size crops"
            )
        if min(cfg.size) % source.size_divisor:
            raise GraphkitError(
                f"short-side resize: the short side {min(cfg.size)} (the smaller of input.size) "
                f"must be a multiple of source.size_divisor {source.size_divisor}"
            )


def _only_keys(d: dict, allowed: set[str], where: str) -> None:
    bad = sorted(str(k) for k in d if k not in allowed)
    if bad:
        raise GraphkitError(
            f"unknown key(s) {', '.join(bad)} in {where}; allowed: {', '.join(sorted(allowed))}"
        )


def default_assets() -> str:
    """../shared/assets from the current directory, else beside a source checkout of graphkit.

    The second candidate lets `graphkit` run from any directory in a development checkout
    without setting GRAPHKIT_ASSETS.
    """
    candidates = [Path(DEFAULT_ASSETS), Path(__file__).resolve().parents[2] / DEFAULT_ASSETS]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    return DEFAULT_ASSETS


def _expand(value: str, where: str) -> str:
    """Expand ${VAR} and ${VAR:-default}; GRAPHKIT_ASSETS defaults to ../shared/assets."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        val = os.environ.get(name)
        if val is None or (val == "" and default is not None):
            if default is not None:
                val = default
            elif name == "GRAPHKIT_ASSETS":
                val = default_assets()
            else:
                raise GraphkitError(
                    f"{where} uses ${{{name}}} but that environment variable is not set"
                )
        if name == "GRAPHKIT_ASSETS":
            val = str(Path(val).resolve())
        return val

    return _ENV_RE.sub(sub, value)


def _resolve_path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _number_list(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in (1, 3)
        or not all(_is_number(v) for v in value)
    ):
        raise GraphkitError(
            f"{where} must be a finite number or a list of 3 finite numbers, got {value!r}"
        )
    return tuple(float(v) for v in value) * (3 if len(value) == 1 else 1)


def _is_number(v: Any) -> bool:
    """A finite int or float (NaN and infinities are refused: they poison every sample)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    v = str(value)
    for c in choices:
        if v.upper() == c.upper():
            return c
    raise GraphkitError(f"{where} must be one of {', '.join(choices)}, got {value!r}")


def _validate_input(raw: dict) -> InputConfig:
    allowed = {f.name for f in dataclasses.fields(InputConfig)}
    _only_keys(raw, allowed, "the 'input:' section")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise GraphkitError("input.name must name the model input the samples feed")
    size = raw.get("size")
    if size is not None:
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise GraphkitError(
                f"input.size must be [height, width] in positive pixels, got {size!r}"
            )
        size = (int(size[0]), int(size[1]))
    mean = _number_list(raw["mean"], "input.mean") if raw.get("mean") is not None else None
    std = _number_list(raw["std"], "input.std") if raw.get("std") is not None else None
    if std is not None and any(s == 0 for s in std):
        raise GraphkitError("input.std must not contain 0")
    scale = raw.get("scale")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0:
            raise GraphkitError(f"input.scale must be a non-zero number, got {scale!r}")
        scale = float(scale)
        if std is not None:
            raise GraphkitError("input.scale and input.std both divide the pixels; give only one")
    dtype = _choice(raw.get("dtype", "float32"), DTYPES, "input.dtype").lower()
    if dtype != "float32" and (mean is not None or std is not None or scale is not None):
        raise GraphkitError(
            f"input.dtype {dtype} feeds raw 0..255 pixels, so mean/std/scale cannot be used"
        )
    pad = raw.get("pad_value", 0)
    if isinstance(pad, bool) or not isinstance(pad, (int, float)):
        raise GraphkitError(f"input.pad_value must be a pixel value (0..255), got {pad!r}")
    return InputConfig(
        name=name,
        size=size,
        layout=_choice(raw.get("layout", "NHWC"), LAYOUTS, "input.layout"),
        dtype=dtype,
        color=_choice(raw.get("color", "RGB"), COLORS, "input.color"),
        mean=mean,
        std=std,
        scale=scale,
        pad_value=float(pad),
    )


def _validate_source(raw: dict, base: Path, expand: bool) -> SourceConfig:
    allowed = {f.name for f in dataclasses.fields(SourceConfig)}
    _only_keys(raw, allowed, "the 'source:' section")
    kind = raw.get("type")
    if kind not in SOURCE_TYPES:
        raise GraphkitError(f"source.type must be one of {', '.join(SOURCE_TYPES)}, got {kind!r}")
    vals = dict(raw)
    for key in PATH_KEYS:
        v = vals.get(key)
        if v is None or v == "":
            vals[key] = None
            continue
        if not isinstance(v, (str, os.PathLike)):
            raise GraphkitError(f"source.{key} must be a path, got {v!r}")
        vals[key] = _resolve_path(_expand(str(v), f"source.{key}"), base) if expand else str(v)
    need = {
        "coco-topdown": ("ann", "images"),
        "images": ("images",),
        "npy": ("path",),
        "npz": ("path",),
    }
    for key in need[kind]:
        if vals.get(key) is None:
            raise GraphkitError(f"a {kind} source needs source.{key}")
    limit = vals.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GraphkitError(f"source.limit must be a positive integer or null, got {limit!r}")
    score = vals.get("score_thr", 0.5)
    if not _is_number(score) or not 0.0 <= score <= 1.0:
        raise GraphkitError(f"source.score_thr must be a number in 0..1, got {score!r}")
    padding = vals.get("padding", 1.25)
    if not _is_number(padding) or padding <= 0:
        raise GraphkitError(f"source.padding must be a positive number, got {padding!r}")
    vals["score_thr"], vals["padding"] = float(score), float(padding)
    seed = vals.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GraphkitError(f"source.seed must be an integer, got {seed!r}")
    if not isinstance(vals.get("shuffle", False), bool):
        raise GraphkitError("source.shuffle must be true or false")
    vals["resize"] = _choice(vals.get("resize", "letterbox"), RESIZE_MODES, "source.resize").lower()
    divisor = vals.get("size_divisor", 32)
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise GraphkitError(f"source.size_divisor must be a positive integer, got {divisor!r}")
    return SourceConfig(**vals)


def shard(spec: InputSpec, index: int, count: int) -> InputSpec:
    """Part `index` of `count` disjoint, deterministic parts whose union is the whole spec
    (after shuffle and limit), for calibrating with several worker processes."""
    if count < 1 or not 0 <= index < count:
        raise GraphkitError(f"shard index must be in 0..{count - 1}, got {index}")
    if spec.shard_count != 1:
        # Sharding a shard: part `index` of the parent's part.
        return dataclasses.replace(
            spec,
            shard_index=spec.shard_index + index * spec.shard_count,
            shard_count=spec.shard_count * count,
        )
    return dataclasses.replace(spec, shard_index=index, shard_count=count)
