"""Which layers `quantize` keeps float, under a budget: rank, then add one at a time.

1. Rank: each candidate layer alone int8 (every other layer float), scored by the
   damage it does at the heads (`sensitivity`): first on `screen_samples` crops, then the
   `shortlist` x budget most damaging again on every held-out crop.
2. Search: in ranking order, each next layer is tried float together with those kept;
   it is kept only if the held-out score rises by more than `min_float_gain_db`. The
   search stops at the budget, at the target agreement, or after `patience` ranked
   layers in a row that did not earn a slot.

Every candidate is a Q/DQ model of the plan with some layers float
(`variants.qdq_variants`), run with its weights passed once as OrtValues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from graphkit.quant.recipe import Recipe
from graphkit.quant.scoring import (
    HeldOutScorer,
    Score,
    earns_slot,
    score_key,
    score_record,
    show_score,
    target_reached,
)
from graphkit.quant.sensitivity import quantized_layers, sensitivity
from graphkit.quant.table import QuantPlan
from graphkit.quant.variants import scoring_candidates

Stage = Callable[[str, int, int], None]  # (what, done, total)
# why the float search stopped (plan.recipe["float"]["stopped"]) when the budget did it
BUDGET_SPENT = "budget spent"


@dataclass
class FloatSearch:
    """What the search needs besides the plan: the float model, the plan's Q/DQ models
    with some layers float (`variant`, on the rounded weights `rounded`), the held-out
    scorer and its crops, and where to run the ranking."""

    model: onnx.ModelProto
    variant: Callable[[Sequence[str]], onnx.ModelProto]
    rounded: onnx.ModelProto | None
    scorer: HeldOutScorer
    samples: Sequence[Any]  # the scored crops (Ray tasks get them)
    heads: list[str]
    recipe: Recipe
    on_stage: Stage | None = None
    ray: dict[str, Any] | None = None  # calibrate options when the ranking runs on Ray

    def rank(self, plan: QuantPlan, count: int, names: list[str]) -> list[tuple[str, float]]:
        """(layer, head score with only it int8) of `names` on the first `count` crops,
        most damaging first."""
        what, total, done = f"ranking layers on {count} crops", len(names), 0
        if self.on_stage is not None:
            self.on_stage(what, 0, total)

        def ranked(name: str, score: float) -> None:
            nonlocal done
            done += 1
            if self.on_stage is not None:
                self.on_stage(what, done, total)

        if self.ray is not None:
            rows = _ray_sensitivity(
                self.model,
                self.rounded,
                plan,
                self.samples[:count],
                self.heads,
                self.scorer.rank_by,
                self.ray,
                names,
            )
            if self.on_stage is not None:
                self.on_stage(what, total, total)
            return rows
        return sensitivity(
            self.model,
            self.scorer.subset(count),
            plan,
            layers=names,
            keep_float=plan.keep_float,
            base=self.rounded,
            on_layer=ranked,
            variants=self.variant,  # the plan's, built once: its weights reach onnxruntime once
        )

    def ranking(
        self, plan: QuantPlan, candidates: list[str], budget: int
    ) -> tuple[list[tuple[str, float]], dict[str, int] | None]:
        """The candidates ranked (module doc, step 1) and, when screened, how."""
        recipe = self.recipe
        count = recipe.rank_samples or len(self.samples)
        shortlist = recipe.shortlist * budget
        if 0 < recipe.screen_samples < count and shortlist < len(candidates):
            # a cheap pass on a few crops, then the shortlist on all of them: a layer far
            # from the top on 2 crops is not among the budget's few on 8
            rough = self.rank(plan, recipe.screen_samples, candidates)
            again = self.rank(plan, count, [n for n, _ in rough[:shortlist]])
            screened = {"samples": recipe.screen_samples, "shortlist": shortlist}
            return again + rough[shortlist:], screened
        return self.rank(plan, count, candidates), None

    def run(
        self,
        plan: QuantPlan,
        layers: list[str],
        candidates: list[str],
        budget: int,
        current: Score,
        say: Callable[[str], None],
    ) -> tuple[list[str], Score, dict[str, Any]]:
        """(layers kept float, the held-out score with them, the record of the search);
        each kept layer's reason goes into `plan.float_reasons`."""
        recipe = self.recipe
        ranking, screened = self.ranking(plan, candidates, budget)
        alone = dict(ranking)
        pool = [name for name, _ in ranking]
        chosen: list[str] = []
        steps, tried = [], 0
        trial, memory = scoring_candidates(self.variant)  # run, never kept: weight stubs
        scorer = self.scorer.with_memory(memory)
        misses = 0  # ranked layers tried in a row that did not earn a slot
        while (
            pool
            and len(chosen) < budget
            and misses < recipe.patience
            and not target_reached(current, recipe)
        ):
            # the next `lookahead` most sensitive layers, each tried with those chosen;
            # the one that raises the held-out score most is kept, the others stay in the pool
            trials: list[tuple[Score, str]] = []
            for name in pool[: recipe.lookahead]:
                trials.append((scorer.measure(trial([*plan.keep_float, *chosen, name])), name))
                tried += 1
            got, name = max(trials, key=lambda t: score_key(t[0], recipe))
            worse = {t[1] for t in trials if not earns_slot(t[0], current, recipe)}
            pool = [n for n in pool if n not in worse]
            if not earns_slot(got, current, recipe):
                misses += len(trials)
                continue
            misses = 0
            pool.remove(name)
            chosen.append(name)
            current = got
            plan.float_reasons[name] = (
                f"sensitivity: alone int8 {alone[name]:.1f} dB at the heads; "
                f"float lifts held-out to {show_score(got)}"
            )
            steps.append({"layer": name, **score_record(got)})
            say(f"kept float {name}: {show_score(got)}")
        record: dict[str, Any] = {"screened": screened} if screened else {}
        record["float"] = {
            "budget": budget,
            "layers": len(layers),
            "steps": steps,
            "tried": tried,  # candidates measured, kept or not
            "stopped": _stop_reason(current, recipe, len(chosen) >= budget, misses),
        }
        return chosen, current, record


def _stop_reason(current: Score, recipe: Recipe, spent: bool, misses: int) -> str:
    """Which of the float search's stop rules ended it."""
    if target_reached(current, recipe):
        return "target reached"
    if spent:
        return BUDGET_SPENT
    if misses >= recipe.patience:
        return f"{misses} ranked layer(s) in a row gained {recipe.min_float_gain_db} dB or less"
    return "ranking exhausted"


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


__all__ = ["BUDGET_SPENT", "FloatSearch"]
