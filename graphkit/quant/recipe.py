"""What `quantize` may try: the recipe, its named presets and how options are checked.

Every field is a lever that was measured on the shared pose models (docs/accuracy.md);
the comments say what each one is for and, where it is off, why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from graphkit.errors import GraphkitError
from graphkit.quant.calibrators import canonical_method
from graphkit.quant.targets import NAMES as TARGET_NAMES


@dataclass(frozen=True)
class Recipe:
    """What `quantize` may try. Every step is kept only where the held-out crops say so."""

    methods: tuple[str, ...] = ("mse", "percentile", "minmax")
    round_weights: bool = True
    # a layer whose fit crops give fewer input vectors than this many per weight column
    # keeps nearest rounding (GPTQ would fit the few it has); 0: every layer is rounded
    # (1.0 measured: no gain, docs/accuracy.md)
    rounding_min_vectors: float = 0.0
    max_float: float = 0.10  # at most this fraction of the weighted layers kept float
    # the layer types the float search may choose (None: any); a target that can keep only
    # some float (vacc: Conv, ConvTranspose, MatMul) narrows it (`backends.float_op_types`)
    float_op_types: tuple[str, ...] | None = None
    # the backends the plan is for: the layers one of them runs float whatever the plan
    # says (ncnn: ConvTranspose, MatMuls of two activations) are float from the start,
    # measured so and counted against max_float (`quant.targets.layers_without_int8`)
    targets: tuple[str, ...] = ()
    target_agreement: float | None = 0.98  # stop adding float layers once reached
    lookahead: int = 1  # float candidates tried per step (most sensitive first)
    # a layer is kept float only if it raises the criterion by more than this (dB; not
    # for criterion="agreement"): a smaller gain is noise on the held-out crops, and a
    # budget slot spent on it is not there for a later layer that matters
    min_float_gain_db: float = 0.1
    # the float search stops once this many ranked layers in a row fail to earn a slot:
    # past the few layers that matter the rest gain less than the margin, and trying all
    # of them cost a 293-Conv HRNet 290 full measures (float search 101 -> 338 s)
    patience: int = 5
    # what every choice must raise on the held-out crops: mean (the mean over the heads of
    # their SQNR), sqnr (the worst head's) or agreement (decoded keypoints; noisy)
    criterion: str = "mean"
    bias_correction: str = "auto"  # auto (kept if it helps), on, off
    # bias correction of a Conv read by a Relu / Clip matches that activation's output
    # mean, what the next layers see, not the Conv's own (`bias.correct_bias`; off:
    # held-out higher, val2017 lower on movenet-lightning, docs/accuracy.md)
    bias_through_activation: bool = False
    # never-negative activations as uint8 [0, amax]: auto (where this CPU's onnxruntime
    # runs uint8 exactly, or every target gets them shifted onto int8), on, off
    unsigned: str = "auto"
    # cross-layer equalization first: Conv pairs with a Relu or nothing between (rescaled
    # without a new node) get each channel's range balanced, from every calibration crop
    # (`equalize`); off: movenet-lightning +0.014 on val2017, the other two none or within
    # the noise, and the sign flipped with ranges from 8 crops (docs/accuracy.md)
    equalize: bool = False
    fit_samples: int = 8  # rounding and bias correction are fitted on these
    score_samples: int = 8  # choices are measured on these (held out from the fit)
    # the sensitivity ranking runs on the first of the scored crops (None: all of them)
    rank_samples: int | None = None
    # after the method: each activation tries the other methods' thresholds on its own,
    # kept where the held-out score rises (coordinate search; off: measured, docs)
    tensor_methods: bool = False
    # bias correction also before the float search, so the search ranks the layers by
    # what correction leaves (then corrected again with the final float layers)
    bias_first: bool = False
    # rank every layer on this many scored crops first, then the `shortlist` x budget most
    # sensitive again on all of them (0: every layer on all crops; same plans on the shared models,
    # efficientpose's 1.4x faster, docs/accuracy.md)
    screen_samples: int = 2
    # the screen keeps this many times the float budget for the ranking on all crops (the
    # others follow in their screen order); 1, 2 and 3 gave the same plans on the shared
    # models, 2 keeps a margin (efficientpose float search 26.7 -> 22.5 s against 3)
    shortlist: int = 2

    @property
    def measures(self) -> bool:
        return (
            len(self.methods) > 1
            or self.round_weights
            or self.max_float > 0
            or self.bias_correction != "off"
            or self.unsigned == "auto"
        )


RECIPES = {
    "default": Recipe(),
    # one method, nearest rounding, every layer int8: the plain calibration of ncnn2table,
    # TensorRT's calibrators and onnxruntime's quantize_static
    "plain": Recipe(
        methods=("mse",), round_weights=False, max_float=0.0, bias_correction="off", unsigned="off"
    ),
}


def recipe_of(recipe: Recipe | str, method: str | None = None, **overrides: Any) -> Recipe:
    """A Recipe from a name or a Recipe, with `method` (one method, no choice) and any
    field overridden; options that cannot work are refused in one sentence."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise GraphkitError(f"unknown recipe '{recipe}' (known: {', '.join(RECIPES)})")
        recipe = RECIPES[recipe]
    if method is not None:
        recipe = replace(recipe, methods=(canonical_method(method),))
    recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    if not 0 <= recipe.max_float <= 1:
        raise GraphkitError(f"--max-float must be between 0 and 100%, got {recipe.max_float:.0%}")
    if recipe.target_agreement is not None and not 0 < recipe.target_agreement <= 1:
        raise GraphkitError(f"--target-agreement must be in (0, 1], got {recipe.target_agreement}")
    for what, value in (("bias correction", recipe.bias_correction), ("unsigned", recipe.unsigned)):
        if value not in ("auto", "on", "off"):
            raise GraphkitError(f"{what} must be auto, on or off, not {value}")
    if recipe.criterion not in ("sqnr", "mean", "agreement"):
        raise GraphkitError(f"criterion must be sqnr, mean or agreement, not {recipe.criterion}")
    if recipe.min_float_gain_db < 0:
        raise GraphkitError(f"the least float gain must be >= 0 dB, got {recipe.min_float_gain_db}")
    if recipe.patience < 1:
        raise GraphkitError(f"patience must be at least 1, got {recipe.patience}")
    if recipe.lookahead < 1:
        raise GraphkitError(f"lookahead must be at least 1, got {recipe.lookahead}")
    if min(recipe.fit_samples, recipe.score_samples, recipe.rank_samples or 1) < 1:
        raise GraphkitError("fit, score and rank sample counts must be at least 1")
    if recipe.shortlist < 1:
        raise GraphkitError(
            f"the shortlist must be at least 1 x the budget, got {recipe.shortlist}"
        )
    if recipe.screen_samples < 0:
        raise GraphkitError(f"screen samples must be 0 (off) or more, got {recipe.screen_samples}")
    for m in recipe.methods:
        canonical_method(m)
    unknown = [name for name in recipe.targets if name not in TARGET_NAMES]
    if unknown:
        raise GraphkitError(
            f"unknown target '{unknown[0]}' in the recipe (known: {', '.join(TARGET_NAMES)})"
        )
    return recipe


__all__ = ["RECIPES", "Recipe", "recipe_of"]
