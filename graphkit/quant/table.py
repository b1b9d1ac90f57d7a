"""The quantization plan: every int8 decision in one backend-neutral JSON file.

Every calibrator writes one, every exporter reads one (`QuantPlan`; `CalibrationTable` is
the same class under its older name). Activations are symmetric: amax is the clipping
threshold of |x|, scale = amax / 127 (int8, zero point 0), with the method that chose it;
one marked `unsigned` (never negative, by the graph and on the data) is stored as uint8
over [0, amax] (scale amax / 255) by the backends that have unsigned int8, int8 by the
others.
Weights are symmetric per output channel (per group for depthwise): one amax per channel,
keyed by the initializer name, with the axis it was taken on, the grid (`qmax`) and the
final integers (`int8`: zlib-compressed, base64), so rounding decided here (GPTQ-style or
nearest) reaches every backend. `biases` holds the final float bias of layers whose bias
the plan changed (bias correction). `keep_float` lists the layers left in float, with the
reason for each in `float_reasons`. `equalization` lists the Conv pairs whose channels the
plan rescaled (cross-layer equalization; every backend gets the rescaled model, the
integers are its weights'). Schema version 1 files (thresholds and ranges only), version 2
files (no `unsigned`) and version 3 files (no `equalization`) still load; see
docs/calibration.md "The plan file" for every field.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
from pydantic import AfterValidator, ConfigDict, Field

from graphkit.errors import InputError, ModelError
from graphkit.model import atomic_write_text
from graphkit.validation import STRICT, read_json, validate

SCHEMA_VERSION = 4
MIN_AMAX = 1e-12  # below this a scale underflows float32 arithmetic in backends
MAX_AMAX = 1e30  # above this a scale (and x / scale) overflows float32 in backends
READABLE_VERSIONS = (1, 2, 3, 4)
QMAX = 127.0
UQMAX = 255.0  # the grid of an unsigned activation: uint8 [0, 255], zero point 0


def _at_most_max_amax(value: float) -> float:
    if value > MAX_AMAX:
        raise ValueError(f"must be at most {MAX_AMAX:g} (a larger threshold overflows float32)")
    return value


# a threshold a float32 backend can divide by 127 and multiply back
Amax = Annotated[float, AfterValidator(_at_most_max_amax)]


@dataclass
class ActivationEntry:
    __pydantic_config__ = STRICT  # how plan files are checked (graphkit.validation)

    amax: Annotated[Amax, Field(ge=MIN_AMAX)]
    # statistics that justify the threshold, for reports: observed min/max of the tensor
    min: float | None = None
    max: float | None = None
    # the node(s) that consume this tensor and are quantized on it (op type, node name)
    consumers: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = field(
        default_factory=list
    )
    # how the threshold was chosen: the calibrator's name, or the search that picked it
    method: str = ""
    # never negative (by the graph and on the calibration data), and the plan was measured
    # with it stored as uint8 [0, amax]: one more bit where a backend has unsigned int8
    # (onnxruntime's Q/DQ)
    unsigned: bool = False

    @property
    def scale(self) -> float:
        """The signed int8 scale, amax / 127 (what every backend can store)."""
        return self.amax / QMAX

    @property
    def unsigned_scale(self) -> float:
        """The uint8 scale, amax / 255, of a backend storing an unsigned entry unsigned."""
        return self.amax / UQMAX


@dataclass
class WeightEntry:
    __pydantic_config__ = STRICT

    # per channel (one value when per-tensor)
    amax: Annotated[list[Annotated[Amax, Field(ge=0)]], Field(min_length=1)]
    axis: int = 0
    node: str = ""  # the node using this weight
    op_type: str = ""
    # the integer grid: q in [-qmax, qmax], scale = amax / qmax
    qmax: Annotated[float, Field(ge=1, le=QMAX)] = QMAX
    shape: list[Annotated[int, Field(ge=0)]] = field(default_factory=list)
    int8: str = ""  # the final integers (row-major, `shape`), zlib + base64; "" = round nearest
    rounding: str = ""  # how the integers were chosen: "nearest", "gptq"

    @property
    def scales(self) -> list[float]:
        return [a / self.qmax for a in self.amax]

    def integers(self) -> np.ndarray | None:
        """The plan's int8 weights, or None when the plan leaves rounding to the backend."""
        if not self.int8:
            return None
        return np.frombuffer(_int8_bytes(self.int8, self.shape), np.int8).reshape(self.shape).copy()

    def check_integers(self, where: str) -> None:
        """Refuse, in one sentence naming `where` (the weight), `int8` that is not base64
        of zlib-compressed int8 data holding exactly the integers of `shape`."""
        if self.int8:
            _int8_bytes(self.int8, self.shape, where)

    def set_integers(self, q: np.ndarray, rounding: str) -> None:
        q = np.asarray(q)
        self.shape = [int(d) for d in q.shape]
        self.int8 = base64.b64encode(zlib.compress(q.astype(np.int8).tobytes(), 6)).decode()
        self.rounding = rounding


@dataclass
class EqualizationEntry:
    """One equalized pair (`graphkit.quant.equalize`): the producer Conv's output channel
    i divided by scales[i], each consumer Conv's input channel i multiplied by it."""

    __pydantic_config__ = STRICT

    producer: str
    consumers: Annotated[list[str], Field(min_length=1)]
    scales: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]
    act: str = ""  # the Relu / Clip between them, "" when the producer feeds them directly


@dataclass
class QuantPlan:
    __pydantic_config__ = STRICT

    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    model_hash: str = ""
    model_path: str = ""
    data_source: str = ""
    num_samples: int = 0
    activations: dict[str, ActivationEntry] = field(default_factory=dict)
    weights: dict[str, WeightEntry] = field(default_factory=dict)
    keep_float: list[str] = field(default_factory=list)  # node names left in float
    float_reasons: dict[str, str] = field(default_factory=dict)  # node -> why it is float
    biases: dict[str, list[float]] = field(default_factory=dict)  # node -> final float bias
    recipe: dict[str, Any] = field(default_factory=dict)  # what quantize() did, for reports
    # Conv pairs rescaled before calibration: the model the rest of the plan is about is
    # the given one with these applied (`deploy_model` does it)
    equalization: list[EqualizationEntry] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def unsigned_activations(self) -> list[str]:
        """The activations marked unsigned (uint8 where a backend can store it)."""
        return [name for name, entry in self.activations.items() if entry.unsigned]

    def set_unsigned(self, names: Sequence[str]) -> None:
        """Mark exactly `names` unsigned, every other activation signed."""
        wanted = set(names)
        for name, entry in self.activations.items():
            entry.unsigned = name in wanted

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name, entry in self.activations.items():
            d["activations"][name]["scale"] = entry.scale
        for name, weight in self.weights.items():
            d["weights"][name]["scales"] = weight.scales
        return d

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def check_model(self, model: onnx.ModelProto, what: str = "plan") -> None:
        """Refuse, in one sentence, a model the plan was not made for (its hash differs)."""
        from graphkit.model import model_hash

        if self.model_hash and model_hash(model) != self.model_hash:
            raise ModelError(
                f"the {what} was made for another model (weights/graph hash "
                f"{self.model_hash}, this model {model_hash(model)}): calibrate this model again"
            )

    def deploy_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The float model every backend should be given: each int8 layer's weights are
        exactly q * scale (so a backend that quantizes them itself, per channel by absmax,
        lands on the plan's integers), and the plan's biases are in place (on the
        equalized model when the plan equalized pairs)."""
        from graphkit.quant.deploy import deploy_model

        return deploy_model(self, model)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "table") -> QuantPlan:
        if not isinstance(d, dict) or "activations" not in d or "method" not in d:
            raise InputError(f"{source} is not a graphkit calibration table")
        version = d.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:  # True == 1
            raise InputError(
                f"{source} has table schema version {version}; this graphkit reads "
                + ", ".join(map(str, READABLE_VERSIONS))
            )
        d = dict(d)
        # the derived scales written for readers are not read back
        d["activations"] = _without(d["activations"], "scale")
        d["weights"] = _without(d.get("weights", {}), "scales")
        d["schema_version"] = SCHEMA_VERSION
        plan = validate(cls, d, source)
        if not plan.activations:
            raise InputError(
                f"{source} has no activation ranges (its 'activations' is empty): calibrate "
                "the model again"
            )
        # the parts of the free-form recipe that reports read, written by quantize()
        validate(_RecipeParts, {"recipe": plan.recipe}, source)
        for name, weight in plan.weights.items():
            weight.check_integers(f"{source}: weights.{name}.int8")
        for name, entry in plan.activations.items():
            if entry.unsigned and entry.min is not None and entry.min < 0:
                raise InputError(
                    f"{source}: activations.{name} is marked unsigned but its observed "
                    f"minimum is {entry.min:g} (uint8 would clamp it to 0)"
                )
        return plan

    @classmethod
    def load(cls, path: str | Path) -> QuantPlan:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"calibration table {p} does not exist or is not a file")
        try:
            data = read_json(p, "calibration table")
        except InputError as exc:
            if "not valid JSON" in str(exc):
                raise InputError(f"{p} is not a JSON calibration table") from None
            raise
        return cls.from_dict(data, str(p))


CalibrationTable = QuantPlan  # the name used before the plan held weights and biases


@dataclass
class HeldOutScore:
    """A held-out measurement of `quantize` in `recipe` (final, and one per method)."""

    __pydantic_config__ = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    sqnr_db: float | None  # worst head (None: infinite, the outputs were exact)
    agreement: float | None = None
    mean_sqnr_db: float | None = None
    # the half-width of the agreement's 95 % interval over the held-out crops
    agreement_half95: float | None = None

    @property
    def mean(self) -> float | None:
        return self.sqnr_db if self.mean_sqnr_db is None else self.mean_sqnr_db


@dataclass
class HeldOutCrops:
    """`recipe.held_out`: how many crops fitted and scored the decisions."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)

    fit: Annotated[int, Field(ge=0)] = 0
    scored: Annotated[int, Field(ge=0)] = 0
    heads: list[str] = field(default_factory=list)


@dataclass
class FloatSearch:
    """`recipe.float`: the float search's budget, what it tried and why it stopped."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)

    budget: Annotated[int, Field(ge=0)] = 0
    tried: Annotated[int, Field(ge=0)] = 0
    steps: list[dict[str, Any]] = field(default_factory=list)  # one per layer kept float
    stopped: str = ""  # empty in plans written before the search said why it stopped


def float_search(plan: QuantPlan) -> FloatSearch | None:
    """The plan's float search record, or None (none ran, or it is not what quantize()
    writes)."""
    recipe = plan.recipe if isinstance(plan.recipe, dict) else {}
    return _part(FloatSearch, recipe.get("float"))


@dataclass
class RecipeRecord:
    """The parts of a plan's `recipe` that reports read (the other keys are free-form)."""

    __pydantic_config__ = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    final: HeldOutScore | None = None
    methods: dict[str, HeldOutScore] = field(default_factory=dict)
    held_out: HeldOutCrops | None = None


@dataclass
class _RecipeParts:
    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)

    recipe: RecipeRecord = field(default_factory=RecipeRecord)


def recipe_record(plan: QuantPlan) -> RecipeRecord:
    """The plan's held-out figures; a part that is not what quantize() writes is left out
    (a loaded plan was checked; one built in code may hold anything)."""
    recipe = plan.recipe if isinstance(plan.recipe, dict) else {}
    methods = recipe.get("methods")
    scores = {
        str(m): _part(HeldOutScore, v)
        for m, v in (methods.items() if isinstance(methods, dict) else [])
    }
    return RecipeRecord(
        final=_part(HeldOutScore, recipe.get("final")),
        methods={m: v for m, v in scores.items() if v is not None},
        held_out=_part(HeldOutCrops, recipe.get("held_out")),
    )


def _part(kind: Any, value: Any) -> Any:
    """`value` as `kind`, or None when it is not one."""
    from pydantic import TypeAdapter, ValidationError

    if value is None:
        return None
    try:
        return TypeAdapter(kind).validate_json(json.dumps(value, default=str))
    except ValidationError:
        return None


def held_out_summary(plan: QuantPlan) -> str | None:
    """One line on the final held-out figures of a plan (None when nothing was measured)."""
    record = recipe_record(plan)
    final = record.final
    if final is None:
        return None
    crops = record.held_out.scored if record.held_out is not None else "?"
    agree, half = final.agreement, final.agreement_half95
    text = f"held-out ({crops} crops): mean head SQNR {final.mean} dB (worst head {final.sqnr_db})"
    if agree is not None:
        text += f", agreement {agree:.3f}"
        if half is not None:  # how little 8 crops can tell
            text += f" ±{half:.3f} (95 %)"
    return text


def _int8_bytes(text: str, shape: list[int], where: str = "int8") -> bytes:
    """The raw integers of a weight's `int8` (base64 of zlib), exactly prod(shape) bytes."""
    want = int(np.prod(shape, dtype=np.int64))
    try:
        packed = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise InputError(f"{where} is not base64 text (of zlib-compressed int8 weights)") from None
    z = zlib.decompressobj()
    try:  # at most one byte more than wanted: a zlib bomb is never inflated
        raw = z.decompress(packed, want + 1)
    except zlib.error:
        raise InputError(f"{where} is not zlib-compressed data (base64 of zlib int8)") from None
    if len(raw) != want:
        got = str(len(raw)) if len(raw) <= want else f"more than {want}"
        raise InputError(f"{where} holds {got} integers but its shape {list(shape)} has {want}")
    if not z.eof:
        raise InputError(f"{where} is cut short (its zlib data does not end)")
    return raw


def _without(entries: Any, key: str) -> Any:
    """Each entry of a mapping without `key` (anything else is left for validation)."""
    if not isinstance(entries, dict):
        return entries
    return {
        k: {f: x for f, x in v.items() if f != key} if isinstance(v, dict) else v
        for k, v in entries.items()
    }
