"""The backend-neutral calibration table (JSON, versioned schema).

Every calibrator writes one, every exporter reads one. Activations are symmetric:
amax is the clipping threshold of |x|, scale = amax / 127 (int8, zero point 0). Weights
are symmetric per output channel (per group for depthwise): one amax per channel, keyed by
the initializer name, with the axis it was taken on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphkit.errors import GraphkitError
from graphkit.model import atomic_write_text

SCHEMA_VERSION = 1
QMAX = 127.0


@dataclass
class ActivationEntry:
    amax: float
    # statistics that justify the threshold, for reports: observed min/max of the tensor
    min: float | None = None
    max: float | None = None
    # the node(s) that consume this tensor and are quantized on it (op type, node name)
    consumers: list[list[str]] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.amax / QMAX


@dataclass
class WeightEntry:
    amax: list[float]  # per channel (one value when per-tensor)
    axis: int = 0
    node: str = ""  # the node using this weight
    op_type: str = ""

    @property
    def scales(self) -> list[float]:
        return [a / QMAX for a in self.amax]


@dataclass
class CalibrationTable:
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    model_hash: str = ""
    model_path: str = ""
    data_source: str = ""
    num_samples: int = 0
    activations: dict[str, ActivationEntry] = field(default_factory=dict)
    weights: dict[str, WeightEntry] = field(default_factory=dict)
    keep_float: list[str] = field(default_factory=list)  # node names left in float
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name, entry in self.activations.items():
            d["activations"][name]["scale"] = entry.scale
        for name, entry in self.weights.items():
            d["weights"][name]["scales"] = entry.scales
        return d

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "table") -> CalibrationTable:
        if not isinstance(d, dict) or "activations" not in d or "method" not in d:
            raise GraphkitError(f"{source} is not a graphkit calibration table")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise GraphkitError(
                f"{source} has table schema version {version}; this graphkit reads {SCHEMA_VERSION}"
            )
        acts = {}
        for k, v in d["activations"].items():
            v = {kk: vv for kk, vv in v.items() if kk != "scale"}
            acts[k] = ActivationEntry(**v)
        weights = {}
        for k, v in d.get("weights", {}).items():
            v = {kk: vv for kk, vv in v.items() if kk != "scales"}
            weights[k] = WeightEntry(**v)
        for name, entry in acts.items():
            if not (math.isfinite(entry.amax) and entry.amax > 0):
                raise GraphkitError(f"{source}: activation '{name}' has invalid amax {entry.amax}")
        rest = {k: v for k, v in d.items() if k not in ("activations", "weights")}
        return cls(activations=acts, weights=weights, **rest)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        p = Path(path)
        if not p.exists():
            raise GraphkitError(f"calibration table {p} does not exist")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GraphkitError(f"{p} is not a JSON calibration table") from None
        return cls.from_dict(data, str(p))
