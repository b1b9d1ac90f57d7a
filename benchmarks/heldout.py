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


def val_args() -> dict:
    """The evaluation split: COCO-MINI val2017 (68 persons), never calibrated on."""
    a = assets()
    return {
        "ann": str(a / "coco-mini/annotations/person_keypoints_val2017.json"),
        "images": str(a / "coco-mini/val2017"),
    }


class PairedWithFirst:
    """val2017 figures of int8 variants of one model: AP, agreement with FP32 +- its 95 %
    half-width, and each variant's paired difference from the first one scored (the same
    persons, so far less noisy than the two agreements)."""

    def __init__(self, model_path: Path, spec: Any):
        from graphkit.evaluators.evaluate import evaluate

        self.spec = spec
        self.fp32 = evaluate(str(model_path), spec, **val_args())
        self.first: dict | None = None

    def __call__(self, plan: Any, model: Any, qdq_path: Path) -> tuple[float, str, str]:
        """(AP, 'agreement +-half', 'difference +-half' or '' for the first) of a plan."""
        from graphkit.evaluators.evaluate import agreement_details, evaluate, paired_difference
        from graphkit.model import save_model
        from graphkit.quant.qdq import insert_qdq

        save_model(insert_qdq(plan.deploy_model(model), plan), qdq_path)
        result = evaluate(str(qdq_path), self.spec, **val_args())
        d = agreement_details(self.fp32, result)
        low, high = d["interval95"]
        versus = ""
        if self.first is None:
            self.first = d
        else:
            diff, half = paired_difference(self.first, d)
            versus = f"{diff:+.4f} ±{half:.4f}"
        return result["stats"]["AP"], f"{d['agreement']:.3f} ±{(high - low) / 2:.3f}", versus
