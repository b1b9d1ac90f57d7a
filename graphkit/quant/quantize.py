"""`quantize(model, data, recipe) -> QuantPlan`: every int8 decision, made by measurement.

The default recipe needs no flags and tunes nothing per model by hand. On the
calibration data it holds out a few crops (after the `fit_samples` that weights and
biases are fitted on) and measures each choice there, by the mean over the model's heads
of their SQNR against FP32 (`criterion`):

1. statistics once; each candidate method's thresholds from them, the activations that
   cannot be negative (by the graph, and never on the calibration data) as uint8 over
   [0, amax] (one more bit, where this CPU's onnxruntime runs it exactly or the targets
   get it shifted onto int8; `unsigned`); the method whose Q/DQ model scores best wins
   (records the others' scores);
2. Conv weights rounded against each layer's output (GPTQ-style, `refine`; a layer keeps
   nearest rounding where that has the lower error on its own sampled inputs);
3. float fallback under a budget: layers ranked by the damage they alone do at the heads,
   kept float one by one while the held-out score rises, until the held-out agreement
   (mean OKS of the decoded keypoints with FP32's) reaches `target_agreement` or
   `max_float` of the weighted layers are float;
4. bias correction of the int8 Convs (`bias`), kept only if the held-out score rises.

With `equalize` (off by default), Conv pairs with a Relu or nothing between are equalized
first (`equalize`); the plan records their scales.

Every candidate runs in onnxruntime with the integer arithmetic its Q/DQ nodes write
(`graphkit.runtime.int8_kernels.qdq_level`): on CPUs whose fused int8 kernels saturate,
unfused, so that the plan depends on the model and the data, not on the calibrating CPU.

The result is one `QuantPlan`: thresholds and how each was chosen, per-channel scales,
the final integers, corrected biases, float layers with their reasons, and in
`plan.recipe` every measurement behind them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import onnx

from graphkit.errors import GraphkitError
from graphkit.irgraph import to_ir
from graphkit.logs import step
from graphkit.model import model_hash
from graphkit.quant.calibrators import canonical_method
from graphkit.quant.deploy import fill_integers, with_biases
from graphkit.quant.float_search import BUDGET_SPENT, FloatSearch, Stage
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.recipe import RECIPES, Recipe, recipe_of
from graphkit.quant.scoring import (
    HeldOutScorer,
    Score,
    held_out,
    score_key,
    score_record,
    show_score,
    target_reached,
)
from graphkit.quant.sensitivity import head_tensors, quantized_layers, with_keep_float
from graphkit.quant.signs import never_negative
from graphkit.quant.table import EqualizationEntry, QuantPlan, held_out_summary
from graphkit.quant.targets import int8_only, layers_without_int8, runs_uint8
from graphkit.quant.variants import qdq_variants
from graphkit.runtime.int8_kernels import uint8_conv_exact

Log = Callable[[str], None]
# why `unsigned="auto"` does not try uint8 on this CPU (graphkit.runtime.int8_kernels)
SATURATES = "onnxruntime on this CPU (AVX2 without VNNI) saturates uint8 x int8 sums"


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    data: Any,
    recipe: Recipe | str = "default",
    *,
    method: str | None = None,
    settings: dict[str, Any] | None = None,
    keep_float: Sequence[str] = (),
    log: Log | None = None,
    on_stage: Stage | None = None,
    **calibrate_options: Any,
) -> QuantPlan:
    """Calibrate `model` on the samples of `data` (input spec path or InputSpec) and make
    every int8 decision the recipe allows (module doc). `on_stage(what, done, total)`
    follows the recipe's long steps: weight rounding Conv by Conv, the sensitivity
    ranking layer by layer.
    `calibrate_options` go to `graphkit.quant.calibrate.calibrate` (workers, limit,
    tensors, per_channel, bins, max_outputs_per_run, on_sample, on_total)."""
    from graphkit.quant.calibrate import _load, _load_spec, calibrate_statistics

    say = step(__name__, log)
    recipe = recipe_of(recipe, method)
    model, model_path = _load(model)
    spec = _load_spec(data, calibrate_options.pop("limit", None))
    times: dict[str, float] = {}
    pairs: list[dict[str, Any]] = []
    original = model
    if recipe.equalize:  # 0. every later step sees the equalized model
        t = time.perf_counter()
        model, pairs = _equalized(model, spec, keep_float, say)
        times["equalization"] = time.perf_counter() - t
    # layers a target cannot run int8: float in the plan, so it measures what ships
    forced = {n: why for n, why in _without_int8(model, recipe).items() if n not in keep_float}
    if forced:
        say(f"{len(forced)} layers float for the targets: {_kinds(forced)}")
    t0 = time.perf_counter()
    _, build = calibrate_statistics(
        model,
        spec,
        keep_float=[*keep_float, *forced],
        histograms=any(canonical_method(m) != "minmax" for m in recipe.methods),
        **calibrate_options,
    )
    times["statistics"] = time.perf_counter() - t0
    plan = build(recipe.methods[0], settings)
    plan.model_path = model_path
    plan.float_reasons = {n: "asked (--keep-float)" for n in keep_float} | forced
    record: dict[str, Any] = {"recipe": asdict(recipe)}
    if recipe.unsigned == "on" and not uint8_conv_exact():
        say(
            "uint8 activations asked for, but onnxruntime on this CPU (AVX2 without VNNI) "
            "saturates uint8 x int8 sums: its int8 runs here are worse than the plan"
        )
    if not recipe.measures:
        _mark_methods(plan, plan.method)
        if recipe.unsigned == "on":
            plan.set_unsigned(_unsigned_candidates(plan, model, recipe, say))
        fill_integers(plan, model)
        if forced:
            layers = quantized_layers(model, plan, plan.keep_float)
            record["float_layers"] = _float_count(plan, layers, keep_float, forced)
        plan.recipe = {**record, "seconds": _round(times)}
        return _for_original(plan, original, pairs)

    from graphkit.pose.decoders import build_decoder

    fit, score = held_out(spec, recipe)
    origin = getattr(spec, "origin", None)
    where = f"input spec {origin}" if origin else "the input spec"
    decoder = build_decoder(spec.decode, where) if getattr(spec, "decode", None) else None
    heads = head_tensors(model, decoder.outputs if decoder else None)
    scorer = HeldOutScorer(
        model, score, heads, decoder, "mean" if recipe.criterion == "mean" else "min"
    )
    record["held_out"] = {"fit": len(fit), "scored": len(score), "heads": heads}
    fit_feeds = [s.feeds for s in fit]

    # 1. the method whose thresholds score best (never-negative activations uint8)
    t = time.perf_counter()
    plan, current, plans = _choose_method(model, plan, build, scorer, recipe, record, say)
    times["method"] = time.perf_counter() - t
    if recipe.tensor_methods and len(plans) > 1:
        t = time.perf_counter()
        current, changed = _tensor_methods(model, plan, plans, scorer, current, recipe)
        record["tensor_methods"] = {"changed": changed, "after": score_record(current)}
        say(f"per-tensor thresholds: {len(changed)} changed, {show_score(current)}")
        times["tensor_methods"] = time.perf_counter() - t

    # 2. weight rounding against the layer outputs: each layer keeps the rounding with the
    # lower output error on its sampled inputs (`optimize_weights`), a local and certain
    # gain, kept without a vote of the few held-out crops, whose score is recorded
    rounded = None
    if recipe.round_weights:
        t = time.perf_counter()
        progress = None if on_stage is None else partial(on_stage, "rounding weights")
        rounded = _rounded_weights(model, fit_feeds, plan, recipe, progress)
        times["rounding"] = time.perf_counter() - t
    # Q/DQ models of the plan with some layers float (the int8 ones on the rounded weights)
    variant = qdq_variants(model, plan, rounded)
    if rounded is not None:
        t = time.perf_counter()
        got = scorer.measure(variant(list(plan.keep_float)))
        record["rounding"] = {"before": score_record(current), "after": score_record(got)}
        say(f"weight rounding: {show_score(current)} -> {show_score(got)}")
        current = got
        times["rounding"] += time.perf_counter() - t

    if recipe.bias_first and recipe.bias_correction != "off":
        t = time.perf_counter()
        corrected = _corrected(model, variant(list(plan.keep_float)), fit_feeds, recipe)
        if corrected is not None:
            got = scorer.measure(corrected[0])
            record["bias_first"] = {"before": score_record(current), "after": score_record(got)}
            say(f"bias correction first: {show_score(current)} -> {show_score(got)}")
            if score_key(got, recipe) > score_key(current, recipe):
                plan.biases = _conv_biases(*corrected)
                rounded = with_biases(rounded if rounded is not None else model, plan.biases)
                variant = qdq_variants(model, plan, rounded)
                current = got
        times["bias_first"] = time.perf_counter() - t

    # 3. float fallback under the budget (`float_search`)
    layers = quantized_layers(model, plan, plan.keep_float)
    # the layers the targets run float spend the budget first (--keep-float ones do not)
    budget = max(0, math.floor(recipe.max_float * (len(layers) + len(forced)) + 1e-9) - len(forced))
    if recipe.float_op_types is not None:  # the others cannot be float in some target
        op_of = {n.name: n.op_type for n in model.graph.node}
        candidates = [n for n in layers if op_of.get(n) in recipe.float_op_types]
    else:
        candidates = layers
    if budget and not target_reached(current, recipe) and candidates:
        t = time.perf_counter()
        on_ray = calibrate_options.get("executor", "local") == "ray"
        search = FloatSearch(
            model, variant, rounded, scorer, score, heads, recipe, on_stage,
            calibrate_options if on_ray else None,
        )  # fmt: skip
        chosen, current, found = search.run(plan, layers, candidates, budget, current, say)
        record.update(found)
        times["float"] = time.perf_counter() - t
        if chosen:
            plan = with_keep_float(plan, chosen)

    # 4. bias correction of the int8 Convs, measured with the final float layers
    if recipe.bias_correction != "off":
        t = time.perf_counter()
        corrected = _corrected(model, variant(list(plan.keep_float)), fit_feeds, recipe)
        if corrected is not None:
            got = scorer.measure(corrected[0])
            better = score_key(got, recipe) > score_key(current, recipe)
            kept = recipe.bias_correction == "on" or better
            record["bias_correction"] = {
                "before": score_record(current),
                "after": score_record(got),
                "kept": kept,
            }
            say(
                f"bias correction: {show_score(current)} -> {show_score(got)}"
                + ("" if kept else "; not kept")
            )
            if kept:
                plan.biases = _conv_biases(*corrected)
                current = got
        times["bias"] = time.perf_counter() - t

    # a bias corrected before the float search does not belong to a layer it made float
    plan.biases = {n: b for n, b in plan.biases.items() if n not in plan.keep_float}
    fill_integers(plan, model, rounded)
    record["final"] = score_record(current)
    # None: no decode section (or no person areas), so the agreement was not measured
    record["target_reached"] = (
        None if current.agreement is None else target_reached(current, recipe)
    )
    record["float_layers"] = _float_count(plan, layers, keep_float, forced)
    record["seconds"] = _round(times)
    plan.recipe = record
    return _for_original(plan, original, pairs)


def _equalized(
    model: onnx.ModelProto, spec: Any, keep_float: Sequence[str], say: Log
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """(the model with its Relu / direct Conv pairs equalized, the pairs with their
    scales): channel ranges from every calibration crop (`graphkit.quant.equalize`)."""
    from graphkit.data import iter_samples
    from graphkit.quant.equalize import apply_equalization, equalization

    feeds = (s.feeds for s in iter_samples(spec))
    pairs = equalization(model, feeds, skip=keep_float, clip=False)
    say(f"equalization: {len(pairs)} Conv pairs with a Relu or nothing between")
    return (apply_equalization(model, pairs) if pairs else model), pairs


def _for_original(
    plan: QuantPlan, original: onnx.ModelProto, pairs: list[dict[str, Any]]
) -> QuantPlan:
    """The plan made on the equalized model, for the model the user gave: its hash, and
    the pairs `deploy_model` rescales before the plan's weights go in."""
    if pairs:
        plan.model_hash = model_hash(original)
        plan.equalization = [EqualizationEntry(**p) for p in pairs]
        plan.recipe["equalization"] = {"pairs": len(pairs)}
    return plan


def _choose_method(
    model: onnx.ModelProto,
    plan: QuantPlan,
    build: Callable[..., QuantPlan],
    scorer: HeldOutScorer,
    recipe: Recipe,
    record: dict[str, Any],
    say: Log,
) -> tuple[QuantPlan, Score, dict[str, QuantPlan]]:
    """(the best method's plan, its held-out score, every method's plan): each method's
    thresholds come from the same statistics, the never-negative activations stored as
    uint8 (twice the resolution on [0, amax] for the same range; against signed on the
    shared models it scored 0.6-3 dB higher with every method and made the same plans, so
    signed is not measured too)."""
    unsigned = _unsigned_candidates(plan, model, recipe, say) if recipe.unsigned != "off" else []
    as_uint8 = bool(unsigned)
    exact = uint8_conv_exact()
    if unsigned and recipe.unsigned == "auto" and not exact and runs_uint8(recipe.targets):
        # a CPU whose onnxruntime saturates uint8 x int8 sums: a uint8 plan would run
        # worse here than measured, so signed (`--unsigned on` for VNNI / ARM targets);
        # int8-only targets get the uint8 grid shifted, measured unfused (exact) here
        as_uint8 = False
        say(f"{len(unsigned)} never-negative activations kept signed: {SATURATES}")
    tried: dict[str, Score] = {}
    plans: dict[str, QuantPlan] = {recipe.methods[0]: plan}
    for m in recipe.methods:
        if m not in plans:
            plans[m] = build(m)
            plans[m].float_reasons, plans[m].model_path = plan.float_reasons, plan.model_path
        plans[m].set_unsigned(unsigned if as_uint8 else [])
        # a method whose thresholds equal an earlier one's makes the same Q/DQ model:
        # its score is that one's (posenet: percentile's 99.99 % = every maximum)
        twin = next((k for k in tried if _same_thresholds(plans[k], plans[m])), None)
        tried[m] = tried[twin] if twin is not None else scorer.measure(insert_qdq(model, plans[m]))
        how = f", {len(unsigned)} activations uint8" if as_uint8 else ""
        same = f" (the thresholds of {twin})" if twin is not None else ""
        say(f"method {m}{how}: {show_score(tried[m])}{same}")
    best, current = max(tried.items(), key=lambda kv: score_key(kv[1], recipe))
    _mark_methods(plans[best], best)
    record["methods"] = {m: score_record(v) for m, v in tried.items()}
    if unsigned:
        # onnxruntime's uint8 x int8 kernels saturate on AVX2 CPUs without VNNI:
        # there uint8 measures worse than it is elsewhere (graphkit.runtime.int8_kernels)
        record["unsigned"] = {
            "tensors": len(unsigned),
            "of": len(plans[best].activations),
            "kept": as_uint8,
            "exact_here": exact,
        }
        if not as_uint8:
            record["unsigned"]["skipped"] = SATURATES
    return plans[best], current, plans


def _rounded_weights(
    model: onnx.ModelProto,
    fit: list[dict[str, Any]],
    plan: QuantPlan,
    recipe: Recipe,
    progress: Callable[[int, int], None] | None,
) -> onnx.ModelProto | None:
    """The model with its Conv weights GPTQ-rounded on the plan's grid (`refine`), or
    None when it has no Conv to round (Gemm / MatMul only)."""
    from graphkit.quant.refine import optimize_weights

    try:
        rounded, _ = optimize_weights(
            model, fit, plan, min_vectors=recipe.rounding_min_vectors, on_progress=progress
        )
    except GraphkitError:
        return None
    return rounded


def _corrected(
    model: onnx.ModelProto, qdq: onnx.ModelProto, fit: list[dict[str, Any]], recipe: Recipe
) -> tuple[onnx.ModelProto, list[str]] | None:
    """(`qdq` with its int8 Convs' biases corrected, the corrected Convs), or None when
    there is nothing to correct (`bias.correct_bias`)."""
    from graphkit.quant.bias import correct_bias

    try:
        corrected, done = correct_bias(
            model, qdq, fit, through_activation=recipe.bias_through_activation
        )
    except GraphkitError:
        return None
    return corrected, done.nodes


def _tensor_methods(model, plan, plans, scorer, current, recipe):
    """Coordinate search: each activation in turn takes the threshold of another method
    where that alone raises the held-out score; returns the new score and the changes."""
    changed: dict[str, str] = {}
    for name, entry in plan.activations.items():
        for m, other in plans.items():
            amax = other.activations[name].amax if name in other.activations else None
            if amax is None or abs(amax - entry.amax) <= 1e-6 * entry.amax:
                continue
            before = entry.amax
            entry.amax = amax
            got = scorer.measure(insert_qdq(model, plan))
            if score_key(got, recipe) > score_key(current, recipe):
                current, changed[name] = got, m
                entry.method = f"{m} (per tensor, held-out)"
            else:
                entry.amax = before
    return current, changed


def _same_thresholds(a: QuantPlan, b: QuantPlan) -> bool:
    """Whether two plans quantize every activation on the same threshold."""
    return a.activations.keys() == b.activations.keys() and all(
        a.activations[k].amax == b.activations[k].amax for k in a.activations
    )


def _round(times: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in times.items()}


def nonnegative(plan: QuantPlan, model: onnx.ModelProto | None = None) -> list[str]:
    """Activations a backend with unsigned int8 can store over [0, amax] with twice the
    resolution: never negative on the calibration data (observed min >= 0) and, given the
    model, unable to be negative by the graph (`signs.never_negative`) unless a graph
    input, whose calibration range is all that is known of it."""
    seen = [n for n, e in plan.activations.items() if e.min is not None and e.min >= 0]
    if model is None:
        return seen
    sure = never_negative(model) | {i.name for i in model.graph.input}
    return [n for n in seen if n in sure]


def _mark_methods(plan: QuantPlan, how: str) -> None:
    for entry in plan.activations.values():
        entry.method = how


def _unsigned_candidates(
    plan: QuantPlan, model: onnx.ModelProto, recipe: Recipe, say: Log
) -> list[str]:
    """The activations that may be stored uint8: never negative, and for a recipe with
    int8-only targets, only those the export can shift onto their int8
    (graphkit.quant.shift); the others are measured signed, as they will run."""
    unsigned = nonnegative(plan, model)
    signed_targets = int8_only(recipe.targets)
    if unsigned and signed_targets:
        from graphkit.quant.shift import shiftable

        inputs = sum(bool(plan.activations[n].consumers) for n in unsigned)  # of int8 layers
        unsigned = shiftable(model, unsigned)
        if inputs:
            say(
                f"{len(unsigned)} of {inputs} never-negative int8 inputs can be shifted onto "
                f"int8 for {', '.join(signed_targets)}: measured as uint8, exported shifted"
            )
    return unsigned


def _without_int8(model: onnx.ModelProto, recipe: Recipe) -> dict[str, str]:
    """`backends.layers_without_int8` for the recipe's targets."""
    return layers_without_int8(model, recipe.targets) if recipe.targets else {}


def _float_count(plan, layers, keep_float, forced) -> dict[str, int]:
    """plan.recipe["float_layers"]: float layers of all the weighted ones, and how many
    of them a target runs float whatever the plan says."""
    out = {"count": len(plan.keep_float), "of": len(layers) + len(keep_float) + len(forced)}
    return out | ({"for_targets": len(forced)} if forced else {})


def _kinds(reasons: dict[str, str]) -> str:
    """'3 x ncnn has no int8 Deconvolution; ...': the reasons counted."""
    from collections import Counter

    return "; ".join(f"{k} x {why}" for why, k in Counter(reasons.values()).items())


def _conv_biases(qdq: onnx.ModelProto, nodes: Sequence[str]) -> dict[str, list[float]]:
    """The final float bias of each corrected Conv, read from the corrected Q/DQ model."""
    wanted = set(nodes)
    out = {}
    for node in to_ir(qdq).graph:
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if node.name not in wanted or bias is None or not bias.is_initializer():
            continue
        if bias.const_value is not None:
            out[node.name] = [float(x) for x in bias.const_value.numpy().ravel()]
    return out


__all__ = [
    "BUDGET_SPENT",
    "RECIPES",
    "HeldOutScorer",
    "Recipe",
    "Score",
    "held_out",
    "held_out_summary",
    "nonnegative",
    "quantize",
    "recipe_of",
]
