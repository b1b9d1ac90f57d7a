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

Every candidate runs in onnxruntime with the integer arithmetic its Q/DQ nodes write
(`graphkit.runtime.int8_kernels.qdq_level`): on CPUs whose fused int8 kernels saturate,
unfused, so that the plan depends on the model and the data, not on the calibrating CPU.

The result is one `QuantPlan`: thresholds and how each was chosen, per-channel scales,
the final integers, corrected biases, float layers with their reasons, and in
`plan.recipe` every measurement behind them.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import onnx

from graphkit.errors import GraphkitError
from graphkit.irgraph import to_ir
from graphkit.logs import step
from graphkit.metrics import sqnr_db, squared_error
from graphkit.quant.calibrators import canonical_method
from graphkit.quant.deploy import fill_integers, with_biases
from graphkit.quant.qdq import insert_qdq
from graphkit.quant.sensitivity import (
    OutputScorer,
    head_tensors,
    quantized_layers,
    sensitivity,
)
from graphkit.quant.signs import never_negative
from graphkit.quant.table import QuantPlan, held_out_summary
from graphkit.quant.targets import NAMES as TARGET_NAMES
from graphkit.quant.targets import int8_only, layers_without_int8, runs_uint8
from graphkit.quant.variants import qdq_variants, scoring_candidates
from graphkit.runtime.int8_kernels import uint8_conv_exact

Log = Callable[[str], None]
Stage = Callable[[str, int, int], None]  # (what, done, total)
# why `unsigned="auto"` does not try uint8 on this CPU (graphkit.runtime.int8_kernels)
SATURATES = "onnxruntime on this CPU (AVX2 without VNNI) saturates uint8 x int8 sums"


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


class Score(NamedTuple):
    """A candidate on the held-out crops: worst head SQNR (dB), agreement (None without
    a decoder), mean head SQNR (dB), and the half-width of the agreement's 95 % interval
    over the crops (on 8 crops about +-0.05: the target check reads the mean)."""

    worst: float
    agreement: float | None
    mean: float
    agreement_half95: float | None = None


class HeldOutScorer(OutputScorer):
    """Head SQNR (what `sensitivity` ranks by) and, with a decoder, the agreement of the
    decoded keypoints with FP32's, from one run of each candidate on the held-out crops."""

    def __init__(
        self,
        model: onnx.ModelProto,
        samples: Sequence[Any],
        heads,
        decoder=None,
        rank_by: str = "min",
        threads: int | None = None,
    ):
        self.rank_by = rank_by
        self.decoder = decoder if decoder is not None and _has_areas(samples) else None
        self.metas = [s.meta for s in samples]
        extra = [o for o in (self.decoder.outputs if self.decoder else []) if o not in heads]
        self.heads = list(heads)
        super().__init__(model, [s.feeds for s in samples], [*heads, *extra], threads)
        self.signal = self.signal[: len(self.heads)]
        self.reference_points = (
            [self._points(r, m) for r, m in zip(self.reference, self.metas)]
            if self.decoder is not None
            else []
        )

    def subset(self, count: int) -> HeldOutScorer:
        out = super().subset(count)
        out.metas, out.reference_points = self.metas[:count], self.reference_points[:count]
        return out

    def _points(self, outputs: list[np.ndarray], meta: dict) -> np.ndarray:
        """The decoded keypoints of one crop, in image pixels (17, 3)."""
        named = dict(zip(self.outputs, outputs))
        assert self.decoder is not None  # only called when there is one
        people = self.decoder({k: named[k] for k in self.decoder.outputs}, meta["input_size"])
        kp = people[0].keypoints if people else np.zeros((17, 3))
        m = np.asarray(meta["crop_to_image"], np.float64)
        return np.c_[kp[:, :2] @ m[:, :2].T + m[:, 2], kp[:, 2:]]

    def measure(self, candidate: onnx.ModelProto, decode: bool = True) -> Score:
        """Worst and mean head SQNR and (decode=True) the agreement of a candidate model."""
        from graphkit.pose.oks import half_width95, oks

        sess = self._session(candidate)
        noise = [0.0] * len(self.heads)
        points = []
        for feeds, ref, meta in zip(self.samples, self.reference, self.metas):
            got = sess.run(self.outputs, feeds)
            for k in range(len(self.heads)):
                noise[k] += squared_error(ref[k], got[k])
            if decode and self.decoder is not None:
                points.append(self._points(got, meta))
        per_head = [sqnr_db(s, n) for s, n in zip(self.signal, noise)]
        agree = half = None
        if decode and self.decoder is not None:
            per_crop = [  # the agreement of each crop: its person's OKS with FP32's
                oks(r, p, m["area"], self.decoder.predicted)
                for r, p, m in zip(self.reference_points, points, self.metas)
            ]
            agree, half = float(np.mean(per_crop)), half_width95(per_crop)
        worst, mean = _worst_and_mean(per_head)
        return Score(worst, agree, mean, half)

    def __call__(self, candidate: onnx.ModelProto) -> float:
        """The number `sensitivity` ranks layers by: the mean head SQNR (`rank_by="mean"`)
        or the worst head's; no decoding, which the ranking does not use."""
        noise = self.errors(candidate, len(self.heads))  # from the float tensors if it can
        worst, mean = _worst_and_mean([sqnr_db(s, n) for s, n in zip(self.signal, noise)])
        return mean if self.rank_by == "mean" else worst


def _worst_and_mean(per_head: list[float]) -> tuple[float, float]:
    """The worst head SQNR and the mean of the finite ones (the worst if none is)."""
    finite = [h for h in per_head if math.isfinite(h)]
    worst = min(per_head)
    return worst, sum(finite) / len(finite) if finite else worst


def _has_areas(samples: Sequence[Any]) -> bool:
    return all(s.meta.get("area") and s.meta.get("crop_to_image") is not None for s in samples)


def held_out(spec, recipe: Recipe) -> tuple[list[Any], list[Any]]:
    """(fit samples, score samples): the first `fit_samples`, then the next `score_samples`
    (the first ones again when the data is too short to hold any out)."""
    from graphkit.data import iter_samples

    want = recipe.fit_samples + recipe.score_samples
    samples = list(itertools.islice(iter_samples(spec), want))
    fit = samples[: recipe.fit_samples]
    score = samples[recipe.fit_samples :] or samples[: recipe.score_samples]
    return fit, score


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
    times = {"statistics": time.perf_counter() - t0}
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
        return plan

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

    # 1. method: each method's thresholds (all from the same statistics), the
    # never-negative activations stored as uint8 (twice the resolution on [0, amax] for
    # the same range; measured against signed on the shared models, it scored 0.6-3 dB
    # higher with every method and made the same plans, so signed is not measured too);
    # the best on the held-out crops wins
    t = time.perf_counter()
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
            plans[m].float_reasons, plans[m].model_path = plan.float_reasons, model_path
        plans[m].set_unsigned(unsigned if as_uint8 else [])
        # a method whose thresholds equal an earlier one's makes the same Q/DQ model:
        # its score is that one's (posenet: percentile's 99.99 % = every maximum)
        twin = next((k for k in tried if _same_thresholds(plans[k], plans[m])), None)
        tried[m] = tried[twin] if twin is not None else scorer.measure(insert_qdq(model, plans[m]))
        how = f", {len(unsigned)} activations uint8" if as_uint8 else ""
        same = f" (the thresholds of {twin})" if twin is not None else ""
        say(f"method {m}{how}: {_show(tried[m])}{same}")
    best, current = max(tried.items(), key=lambda kv: _key(kv[1], recipe))
    plan = plans[best]
    _mark_methods(plan, best)
    record["methods"] = {m: _score(v) for m, v in tried.items()}
    if unsigned:
        # onnxruntime's uint8 x int8 kernels saturate on AVX2 CPUs without VNNI:
        # there uint8 measures worse than it is elsewhere (graphkit.runtime.int8_kernels)
        record["unsigned"] = {
            "tensors": len(unsigned),
            "of": len(plan.activations),
            "kept": as_uint8,
            "exact_here": exact,
        }
        if not as_uint8:
            record["unsigned"]["skipped"] = SATURATES
    times["method"] = time.perf_counter() - t
    if recipe.tensor_methods and len(plans) > 1:
        t = time.perf_counter()
        current, changed = _tensor_methods(model, plan, plans, scorer, current, recipe)
        record["tensor_methods"] = {"changed": changed, "after": _score(current)}
        say(f"per-tensor thresholds: {len(changed)} changed, {_show(current)}")
        times["tensor_methods"] = time.perf_counter() - t

    # 2. weight rounding against the layer outputs
    rounded = None
    if recipe.round_weights:
        from graphkit.quant.refine import optimize_weights

        t = time.perf_counter()
        try:
            progress = None if on_stage is None else partial(on_stage, "rounding weights")
            candidate, _ = optimize_weights(
                model,
                [s.feeds for s in fit],
                plan,
                min_vectors=recipe.rounding_min_vectors,
                on_progress=progress,
            )
        except GraphkitError:
            candidate = None  # no Conv to round (Gemm/MatMul only)
        if candidate is not None:
            # each layer keeps the rounding with the lower output error on its sampled
            # inputs (optimize_weights), a local and certain gain: kept without a vote of
            # the few held-out crops, whose head SQNR is recorded for the report
            rounded = candidate
        times["rounding"] = time.perf_counter() - t
    # Q/DQ models of the plan with some layers float (the int8 ones on the rounded weights)
    variant = qdq_variants(model, plan, rounded)
    if rounded is not None:
        t = time.perf_counter()
        got = scorer.measure(variant(list(plan.keep_float)))
        record["rounding"] = {"before": _score(current), "after": _score(got)}
        say(f"weight rounding: {_show(current)} -> {_show(got)}")
        current = got
        times["rounding"] += time.perf_counter() - t

    if recipe.bias_first and recipe.bias_correction != "off":
        from graphkit.quant.bias import correct_bias

        t = time.perf_counter()
        try:
            corrected, done = correct_bias(
                model,
                variant(list(plan.keep_float)),
                [s.feeds for s in fit],
                through_activation=recipe.bias_through_activation,
            )
        except GraphkitError:
            corrected = None
        if corrected is not None:
            got = scorer.measure(corrected)
            record["bias_first"] = {"before": _score(current), "after": _score(got)}
            say(f"bias correction first: {_show(current)} -> {_show(got)}")
            if _key(got, recipe) > _key(current, recipe):
                plan.biases = _conv_biases(corrected, done.nodes)
                rounded = with_biases(rounded if rounded is not None else model, plan.biases)
                variant = qdq_variants(model, plan, rounded)
                current = got
        times["bias_first"] = time.perf_counter() - t

    # 3. float fallback under the budget
    layers = quantized_layers(model, plan, plan.keep_float)
    # the layers the targets run float spend the budget first (--keep-float ones do not)
    budget = max(0, math.floor(recipe.max_float * (len(layers) + len(forced)) + 1e-9) - len(forced))
    if recipe.float_op_types is not None:  # the others cannot be float in some target
        op_of = {n.name: n.op_type for n in model.graph.node}
        candidates = [n for n in layers if op_of.get(n) in recipe.float_op_types]
    else:
        candidates = layers
    reached = _reached(current, recipe)
    chosen: list[str] = []
    if budget and not reached and candidates:
        t = time.perf_counter()
        on_ray = calibrate_options.get("executor", "local") == "ray"

        def rank(count: int, names: list[str] | None = None) -> list[tuple[str, float]]:
            what = f"ranking layers on {count} crops"
            total, done = len(names or layers), 0

            def ranked(name: str, score: float) -> None:
                nonlocal done
                done += 1
                if on_stage is not None:
                    on_stage(what, done, total)

            if on_stage is not None:
                on_stage(what, 0, total)
            if on_ray:
                rows = _ray_sensitivity(
                    model,
                    rounded,
                    plan,
                    score[:count],
                    heads,
                    scorer.rank_by,
                    calibrate_options,
                    names,
                )
                if on_stage is not None:
                    on_stage(what, total, total)
                return rows
            return sensitivity(
                model,
                scorer.subset(count),
                plan,
                layers=names,
                keep_float=plan.keep_float,
                base=rounded,
                on_layer=ranked,
                variants=variant,  # the plan's, built once: its weights reach onnxruntime once
            )

        count, shortlist = recipe.rank_samples or len(score), recipe.shortlist * budget
        if 0 < recipe.screen_samples < count and shortlist < len(candidates):
            # a cheap pass on a few crops, then the shortlist on all of them: a layer far
            # from the top on 2 crops is not among the budget's few on 8
            rough = rank(recipe.screen_samples, candidates)
            ranking = rank(count, [n for n, _ in rough[:shortlist]]) + rough[shortlist:]
            record["screened"] = {"samples": recipe.screen_samples, "shortlist": shortlist}
        else:
            ranking = rank(count, candidates)
        alone = dict(ranking)
        pool = [name for name, _ in ranking]
        steps, tried_layers = [], 0
        trial, memory = scoring_candidates(variant)  # run, never kept: weight stubs
        trials_scorer = scorer.with_memory(memory)
        misses = 0  # ranked layers tried in a row that did not earn a slot
        while (
            pool
            and len(chosen) < budget
            and misses < recipe.patience
            and not _reached(current, recipe)
        ):
            # the next `lookahead` most sensitive layers, each tried with those chosen;
            # the one that raises the held-out SQNR most is kept, the others stay in the pool
            trials: list[tuple[Score, str]] = []
            for name in pool[: recipe.lookahead]:
                cand = trial([*plan.keep_float, *chosen, name])
                trials.append((trials_scorer.measure(cand), name))
                tried_layers += 1
            got, name = max(trials, key=lambda t: _key(t[0], recipe))
            worse = {t[1] for t in trials if not _gains(t[0], current, recipe)}
            pool = [n for n in pool if n not in worse]
            if not _gains(got, current, recipe):
                misses += len(trials)
                continue
            misses = 0
            pool.remove(name)
            chosen.append(name)
            current = got
            plan.float_reasons[name] = (
                f"sensitivity: alone int8 {alone[name]:.1f} dB at the heads; "
                f"float lifts held-out to {_show(got)}"
            )
            steps.append({"layer": name, **_score(got)})
            say(f"kept float {name}: {_show(got)}")
        record["float"] = {
            "budget": budget,
            "layers": len(layers),
            "steps": steps,
            "tried": tried_layers,  # candidates measured, kept or not
            "stopped": _stop_reason(current, recipe, len(chosen) >= budget, misses),
        }
        times["float"] = time.perf_counter() - t
    if chosen:
        plan = _with_float(plan, chosen)

    # 4. bias correction of the int8 Convs, measured with the final float layers
    if recipe.bias_correction != "off":
        from graphkit.quant.bias import correct_bias

        t = time.perf_counter()
        qdq = variant(list(plan.keep_float))
        try:
            corrected, done = correct_bias(
                model,
                qdq,
                [s.feeds for s in fit],
                through_activation=recipe.bias_through_activation,
            )
        except GraphkitError:
            corrected = None
        if corrected is not None:
            got = scorer.measure(corrected)
            kept = recipe.bias_correction == "on" or _key(got, recipe) > _key(current, recipe)
            record["bias_correction"] = {
                "before": _score(current),
                "after": _score(got),
                "kept": kept,
            }
            say(
                f"bias correction: {_show(current)} -> {_show(got)}"
                + ("" if kept else "; not kept")
            )
            if kept:
                plan.biases = _conv_biases(corrected, done.nodes)
                current = got
        times["bias"] = time.perf_counter() - t

    # a bias corrected before the float search does not belong to a layer it made float
    plan.biases = {n: b for n, b in plan.biases.items() if n not in plan.keep_float}
    fill_integers(plan, model, rounded)
    record["final"] = _score(current)
    # None: no decode section (or no person areas), so the agreement was not measured
    record["target_reached"] = None if current.agreement is None else _reached(current, recipe)
    record["float_layers"] = _float_count(plan, layers, keep_float, forced)
    record["seconds"] = _round(times)
    plan.recipe = record
    return plan


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
            if _key(got, recipe) > _key(current, recipe):
                current, changed[name] = got, m
                entry.method = f"{m} (per tensor, held-out)"
            else:
                entry.amax = before
    return current, changed


def _sensitivity_group(layers, plan, heads, rank_by, model_bytes, base_bytes, samples):
    """One Ray task: `sensitivity` of some layers, on one core."""
    model = onnx.ModelProto.FromString(model_bytes)
    base = onnx.ModelProto.FromString(base_bytes) if base_bytes else None
    scorer = HeldOutScorer(model, samples, heads, None, rank_by, threads=1)
    return sensitivity(model, scorer, plan, layers=layers, keep_float=plan.keep_float, base=base)


def _ray_sensitivity(model, rounded, plan, samples, heads, rank_by, options, names=None):
    """`sensitivity` with the layers (`names`, default all) split over Ray tasks; the same
    ranking."""
    from graphkit.runtime.ray_tasks import connect, run_tasks

    address = options.get("ray_address")
    layers = names or quantized_layers(model, plan, plan.keep_float)
    count = max(1, min(len(layers), connect(address)))
    # every layer costs one run of the whole model: equal shares, interleaved
    groups = [layers[i::count] for i in range(count)]
    parts = run_tasks(
        _sensitivity_group,
        [(g, plan, heads, rank_by) for g in groups],
        shared={
            "model_bytes": model.SerializeToString(),
            "base_bytes": rounded.SerializeToString() if rounded is not None else b"",
            "samples": list(samples),
        },
        address=address,
    )
    return sorted((row for part in parts for row in part), key=lambda r: (r[1], r[0]))


def _key(score: Score, recipe: Recipe) -> tuple[float, float]:
    """What every choice maximizes (`recipe.criterion`): the mean head SQNR, the worst
    head's, or the agreement (when measured); the worst head breaks ties."""
    if recipe.criterion == "agreement" and score.agreement is not None:
        return (score.agreement, score.worst)
    if recipe.criterion == "mean":
        return (score.mean, score.worst)
    return (score.worst, 0.0)


# why the float search stopped (plan.recipe["float"]["stopped"]) when the budget did it
BUDGET_SPENT = "budget spent"


def _stop_reason(current: Score, recipe: Recipe, spent: bool, misses: int) -> str:
    """Which of the float search's stop rules ended it."""
    if _reached(current, recipe):
        return "target reached"
    if spent:
        return BUDGET_SPENT
    if misses >= recipe.patience:
        return f"{misses} ranked layer(s) in a row gained {recipe.min_float_gain_db} dB or less"
    return "ranking exhausted"


def _same_thresholds(a: QuantPlan, b: QuantPlan) -> bool:
    """Whether two plans quantize every activation on the same threshold."""
    return a.activations.keys() == b.activations.keys() and all(
        a.activations[k].amax == b.activations[k].amax for k in a.activations
    )


def _gains(new: Score, old: Score, recipe: Recipe) -> bool:
    """Whether a float layer earns its budget slot: `new` beats `old` by more than
    `recipe.min_float_gain_db` on a dB criterion (by anything on the agreement)."""
    margin = 0.0 if recipe.criterion == "agreement" else recipe.min_float_gain_db
    first, second = _key(old, recipe)
    return _key(new, recipe) > (first + margin, second)


def _reached(score: Score, recipe: Recipe) -> bool:
    target = recipe.target_agreement
    return target is not None and score.agreement is not None and score.agreement >= target


def _show(score: Score) -> str:
    """A held-out score for the console: mean head SQNR (worst head), agreement."""
    text = f"{score.mean:.2f} dB"
    if score.mean != score.worst:
        text += f" (worst head {score.worst:.2f})"
    return text + ("" if score.agreement is None else f", agreement {score.agreement:.3f}")


def _score(v: Score) -> dict[str, float | None]:
    def db(x: float) -> float | None:
        return round(x, 3) if math.isfinite(x) else None

    out = {
        "sqnr_db": db(v.worst),
        "agreement": None if v.agreement is None else round(v.agreement, 4),
        "mean_sqnr_db": db(v.mean),
    }
    if v.agreement_half95 is not None:
        out["agreement_half95"] = round(v.agreement_half95, 4)
    return out


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


def _with_float(plan: QuantPlan, nodes: Sequence[str]) -> QuantPlan:
    """The plan with `nodes` float: their weight entries dropped (shared ones kept)."""
    plan.keep_float = list(dict.fromkeys([*plan.keep_float, *nodes]))
    gone = set(nodes)
    plan.weights = {k: w for k, w in plan.weights.items() if w.node not in gone}
    return plan


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
    "RECIPES",
    "HeldOutScorer",
    "Recipe",
    "Score",
    "held_out_summary",
    "quantize",
    "recipe_of",
]
