"""The shared setup of the held-out benchmarks: a shared pose model, its spec and the
default recipe's held-out scorer (fit crops, scored crops, heads, decoder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["efficientpose", "posenet", "movenet-lightning"]


def assets() -> Path:
    """GRAPHKIT_ASSETS (default ../shared/assets), exported for the specs that name it."""
    path = Path(os.environ.get("GRAPHKIT_ASSETS", ROOT.parent / "shared" / "assets")).resolve()
    os.environ.setdefault("GRAPHKIT_ASSETS", str(path))
    return path


def held_out_setup(name: str) -> tuple[Any, Any, list[Any], Any]:
    """(model, input spec, fit samples, HeldOutScorer) of a shared model, as the default
    recipe of `graphkit calibrate` holds its crops out."""
    from graphkit.data import load_input_spec
    from graphkit.model import load_model
    from graphkit.pose.decoders import build_decoder
    from graphkit.quant.quantize import HeldOutScorer, held_out, recipe_of
    from graphkit.quant.sensitivity import head_tensors

    model = load_model(assets() / "models" / f"{name}.onnx")
    spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
    fit, score = held_out(spec, recipe_of("default"))
    decoder = build_decoder(spec.decode)
    scorer = HeldOutScorer(model, score, head_tensors(model, decoder.outputs), decoder)
    return model, spec, fit, scorer
