"""How `quantize` judges a candidate: its heads and decoded keypoints on held-out crops.

`held_out` splits the calibration data into the crops weights and biases are fitted on
and the crops every choice is scored on; `HeldOutScorer.measure` runs a candidate there
and returns a `Score` (head SQNR against FP32, and with a decoder the agreement of the
keypoints); `score_key` is what every choice maximizes under the recipe's criterion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx

from graphkit.metrics import sqnr_db, squared_error
from graphkit.quant.recipe import Recipe
from graphkit.quant.sensitivity import OutputScorer


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


def score_key(score: Score, recipe: Recipe) -> tuple[float, float]:
    """What every choice maximizes (`recipe.criterion`): the mean head SQNR, the worst
    head's, or the agreement (when measured); the worst head breaks ties."""
    if recipe.criterion == "agreement" and score.agreement is not None:
        return (score.agreement, score.worst)
    if recipe.criterion == "mean":
        return (score.mean, score.worst)
    return (score.worst, 0.0)


def earns_slot(new: Score, old: Score, recipe: Recipe) -> bool:
    """Whether a float layer earns its budget slot: `new` beats `old` by more than
    `recipe.min_float_gain_db` on a dB criterion (by anything on the agreement)."""
    margin = 0.0 if recipe.criterion == "agreement" else recipe.min_float_gain_db
    first, second = score_key(old, recipe)
    return score_key(new, recipe) > (first + margin, second)


def target_reached(score: Score, recipe: Recipe) -> bool:
    target = recipe.target_agreement
    return target is not None and score.agreement is not None and score.agreement >= target


def show_score(score: Score) -> str:
    """A held-out score for the console: mean head SQNR (worst head), agreement."""
    text = f"{score.mean:.2f} dB"
    if score.mean != score.worst:
        text += f" (worst head {score.worst:.2f})"
    return text + ("" if score.agreement is None else f", agreement {score.agreement:.3f}")


def score_record(v: Score) -> dict[str, float | None]:
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


__all__ = [
    "HeldOutScorer",
    "Score",
    "earns_slot",
    "held_out",
    "score_key",
    "score_record",
    "show_score",
    "target_reached",
]
