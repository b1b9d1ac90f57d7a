"""What each deployment target can run in int8, for the decisions made before export.

The quantization recipe reads these facts (which targets store uint8, which layers a
target runs float whatever the plan says) so a plan made for a target measures what that
target runs; the backends package re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from graphkit.irgraph import to_ir
from graphkit.quant.collect import layer_activations

# every deployment target graphkit writes (graphkit.backends has one package each)
NAMES = ("ncnn", "tensorrt", "atc", "vacc", "onnx")
# targets that store a plan's unsigned activations as uint8; the others store them int8
# (shifted onto it where they can be: graphkit.quant.shift)
UNSIGNED_TARGETS = ("onnx",)


def int8_only(targets: Sequence[str]) -> list[str]:
    """Those of `targets` that store signed int8 only (they get uint8 shifted)."""
    return [name for name in targets if name not in UNSIGNED_TARGETS]


def runs_uint8(targets: Sequence[str]) -> bool:
    """Whether the plan's uint8 Q/DQ model may run as it is: no target named, or onnx."""
    return not targets or len(int8_only(targets)) < len(targets)


# what a target runs float whatever the plan says, for want of an int8 form there: a plan
# made for it keeps these float from the start, so what the recipe measures is what that
# backend runs, and they count against the float budget (docs/accuracy.md)
NO_INT8 = {
    "ncnn": {
        "ConvTranspose": "ncnn has no int8 Deconvolution",
        "MatMul of two activations": "ncnn has no int8 MatMul of two activations",
    }
}


def layers_without_int8(model: onnx.ModelProto, targets: Sequence[str]) -> dict[str, str]:
    """{node: why} for the layers that one of `targets` runs float whatever the plan says
    (NO_INT8), in graph order."""
    rules = [NO_INT8[t] for t in targets if t in NO_INT8]
    if not rules:
        return {}
    out = {}
    for node in to_ir(model).graph:
        kind = node.op_type
        if kind == "MatMul" and len(layer_activations(node)) == 2:
            kind = "MatMul of two activations"
        why = next((rule[kind] for rule in rules if kind in rule), None)
        if why is not None and node.name:
            out[node.name] = why
    return out
