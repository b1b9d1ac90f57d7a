"""The YAML input spec: how images become model inputs, one file for every command.

A spec has three sections: `input` (what the model wants: name, size, layout, dtype and
normalization), `source` (where the samples come from) and an optional `decode` that is
passed through untouched for the evaluators. Loading validates everything up front so a
typo fails in one sentence before any image is read: pydantic checks each section as
written (`_SpecFile`), then paths are expanded and resolved and the sections checked
against each other.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from graphkit.errors import InputError
from graphkit.validation import STRICT, read_yaml, validate

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
        merged = {k: v for k, v in dataclasses.asdict(self.source).items() if v is not None}
        merged.update(overrides)
        section = validate(_SourceSection, merged, "the source")
        source = _source_config(section, Path.cwd(), False)
        for key, value in overrides.items():  # paths given here: relative to the cwd
            if key in PATH_KEYS and value is not None:
                path = _resolve_path(_expand(str(value), f"source.{key}"), Path.cwd())
                moved: dict[str, Any] = {key: path}
                source = dataclasses.replace(source, **moved)
        _check_combination(self.input, source)
        return dataclasses.replace(self, source=source)


class _Section(BaseModel):
    """A spec section as written: types, unknown keys, NaN/inf refused (pydantic, strict)."""

    model_config = STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if v == "" else v


def _one_of(choices: tuple[str, ...]):
    """A case-insensitive choice, given back as written in `choices`."""

    def check(v: Any) -> str:
        for c in choices:
            if isinstance(v, str) and v.upper() == c.upper():
                return c
        raise ValueError(f"must be one of {', '.join(choices)}")

    return BeforeValidator(check)


def _three(v: Any) -> Any:
    """mean/std: one number for all channels or three (RGB / BGR order as `color`)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (v,) * 3
    if isinstance(v, list):  # a before-validator hands on Python values: tuples, not lists
        return tuple(v * 3 if len(v) == 1 else v)
    return v


def _pair(v: Any) -> Any:
    """input.size: [height, width], or one number for both."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    return tuple(v) if isinstance(v, list) else v


Channels = Annotated[tuple[float, float, float], BeforeValidator(_three)]
Path_ = Annotated[str, Field(min_length=1)]


class _InputSection(_Section):
    name: Annotated[str, Field(min_length=1)]
    size: Annotated[tuple[PositiveInt, PositiveInt] | None, BeforeValidator(_pair)] = None
    layout: Annotated[str, _one_of(LAYOUTS)] = "NHWC"
    dtype: Annotated[str, _one_of(DTYPES)] = "float32"
    color: Annotated[str, _one_of(COLORS)] = "RGB"
    mean: Channels | None = None
    std: Channels | None = None
    scale: float | None = None
    # a pixel value, before mean/std: what the warp fills outside the image
    pad_value: Annotated[float, Field(ge=0.0, le=255.0)] = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> _InputSection:
        if self.std is not None and 0 in self.std:
            raise ValueError("input.std must not contain 0")
        if self.scale is not None and self.scale == 0:
            raise ValueError("input.scale must not be 0")
        if self.scale is not None and self.std is not None:
            raise ValueError("input.scale and input.std both divide the pixels; give only one")
        if self.dtype != "float32" and (self.mean, self.std, self.scale) != (None,) * 3:
            raise ValueError(
                f"input.dtype {self.dtype} feeds raw 0..255 pixels, so mean/std/scale "
                "cannot be used"
            )
        return self


class _SourceSection(_Section):
    type: Annotated[str, _one_of(SOURCE_TYPES)]
    ann: Path_ | None = None
    images: Path_ | None = None
    dets: Path_ | None = None
    path: Path_ | None = None
    score_thr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    padding: Annotated[float, Field(gt=0.0)] = 1.25
    resize: Annotated[str, _one_of(RESIZE_MODES)] = "letterbox"
    size_divisor: PositiveInt = 32
    limit: PositiveInt | None = None
    shuffle: bool = False
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _has_its_paths(self) -> _SourceSection:
        need = {"coco-topdown": ("ann", "images"), "images": ("images",)}
        for key in need.get(self.type, ("path",)):
            if getattr(self, key) is None:
                raise ValueError(f"a {self.type} source needs source.{key}")
        return self


class _EvalSection(_Section):
    ann: Path_
    images: Path_
    dets: Path_ | None = None


class _SpecFile(_Section):
    input: _InputSection
    source: _SourceSection
    decode: dict[str, Any] | None = None
    eval: _EvalSection | None = None


def load_input_spec(
    path_or_dict: str | os.PathLike | dict, base_dir: str | os.PathLike | None = None
) -> InputSpec:
    """Read and validate a spec from a YAML file or a dict; GraphkitError on any mistake.

    Relative paths resolve against `base_dir`, else the spec file's folder, else the cwd.
    """
    origin = None
    where = "the input spec"
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        p = Path(path_or_dict)
        raw = read_yaml(p, "input spec")
        base = Path(base_dir) if base_dir is not None else p.resolve().parent
        origin = str(p)
        where = f"input spec {p}"
    if not isinstance(raw, dict):
        raise InputError("an input spec must be a mapping with 'input' and 'source' sections")
    for section in ("input", "source"):
        if section in raw and not isinstance(raw[section], dict):
            raise InputError(f"the input spec needs a '{section}:' section (a mapping)")
    checked = validate(_SpecFile, raw, where)
    cfg = InputConfig(**checked.input.model_dump())
    source = _source_config(checked.source, base.resolve(), True)
    _check_combination(cfg, source)
    evaluation = None
    if checked.eval is not None:
        evaluation = {
            k: _resolve_path(_expand(v, f"eval.{k}"), base.resolve())
            for k, v in checked.eval.model_dump().items()
            if v is not None
        }
    return InputSpec(
        input=cfg, source=source, decode=checked.decode, origin=origin, evaluation=evaluation
    )


def _source_config(section: _SourceSection, base: Path, expand: bool) -> SourceConfig:
    """The checked source section with its paths expanded (${VAR}) and made absolute."""
    vals = section.model_dump()
    for key in PATH_KEYS:
        if vals[key] is not None and expand:
            vals[key] = _resolve_path(_expand(vals[key], f"source.{key}"), base)
    return SourceConfig(**vals)


def _check_combination(cfg: InputConfig, source: SourceConfig) -> None:
    if source.type in ("coco-topdown", "images") and cfg.size is None:
        raise InputError(f"a {source.type} source needs input.size: [height, width]")
    if source.resize == "short-side" and cfg.size is not None:
        if source.type != "images":
            raise InputError(
                "source.resize: short-side resizes whole images (source.type: images); "
                f"a {source.type} source makes fixed-size crops"
            )
        if min(cfg.size) % source.size_divisor:
            raise InputError(
                f"short-side resize: the short side {min(cfg.size)} (the smaller of input.size) "
                f"must be a multiple of source.size_divisor {source.size_divisor}"
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
                raise InputError(
                    f"{where} uses ${{{name}}} but that environment variable is not set"
                )
        if name == "GRAPHKIT_ASSETS":
            val = str(Path(val).resolve())
        return val

    return _ENV_RE.sub(sub, value)


def _resolve_path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def shard(spec: InputSpec, index: int, count: int) -> InputSpec:
    """Part `index` of `count` disjoint, deterministic parts whose union is the whole spec
    (after shuffle and limit), for calibrating with several worker processes."""
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard index must be in 0..{count - 1}, got {index}")
    if spec.shard_count != 1:
        # Sharding a shard: part `index` of the parent's part.
        return dataclasses.replace(
            spec,
            shard_index=spec.shard_index + index * spec.shard_count,
            shard_count=spec.shard_count * count,
        )
    return dataclasses.replace(spec, shard_index=index, shard_count=count)
