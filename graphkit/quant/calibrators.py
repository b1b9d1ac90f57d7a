"""Calibrators: small pure functions from a tensor's statistics to a clipping threshold.

Every function takes a TensorStats and keyword settings and returns amax (the symmetric
int8 threshold of |x|; scale = amax / 127). They never touch a model.

Methods:
- ``minmax``: the observed absmax.
- ``kl-ncnn``: ncnn2table's KL: |x| histogram of 2048 bins over [0, absmax], zeros skipped,
  normalized; for every candidate i in [128, 2048) the reference p = hist[:i] with the
  clipped tail added to its last bin; q = hist[:i] (no tail) merged into 128 bins of
  i / 128 (fractional) source bins and spread back as a density; both get +1e-4 per bin
  and KL = sum p log(p / q) without renormalizing (as ncnn does);
  threshold = (i + 0.5) * absmax / 2048 for the first i of least KL.
- ``entropy-trt``: TensorRT's EntropyCalibration2 as NVIDIA's pytorch-quantization writes
  it: same histogram with zeros kept but bin 0 set to the count of bin 1, candidates
  i in [128, 2048], q built from hist[:i] *without* the tail (groups by
  floor(k * 128 / i)), p with the tail in its last bin, KL of the normalized pair (inf
  when q is 0 where p is not); amax = upper edge of bin i (i * absmax / 2048), the last i
  of least divergence. ``entropy`` is an alias of this one.
- ``percentile``: the |x| value below which `percentile` % of the values lie (linear
  inside a bin), default 99.99.
- ``mse``: the bin centre that minimizes the expected squared error of symmetric int8
  quantization of the histogram (bin centres weighted by counts, clipping included).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from graphkit.errors import GraphkitError
from graphkit.quant.observers import TensorStats

QMAX = 127


def minmax(stats: TensorStats) -> float:
    """The largest |x| seen: no clipping."""
    return stats.absmax


def _group_sums(prefix: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return prefix[ends] - prefix[starts]


def kl_ncnn(stats: TensorStats, bins: int = 2048, target_bins: int = 128) -> float:
    """ncnn2table's KL threshold (current ncnn: fractional merging, 1e-4 smoothing)."""
    absmax = stats.absmax
    if absmax == 0.0:
        return 0.0
    hist, _ = stats.histogram(bins=bins, skip_zeros=True)
    return kl_ncnn_from_histogram(hist, absmax, target_bins)


def kl_ncnn_from_histogram(hist: np.ndarray, absmax: float, target_bins: int = 128) -> float:
    """kl-ncnn on a two-pass histogram of |x| (zeros excluded) over [0, absmax]."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = hist.size
    if hist.sum() <= 0:
        return absmax
    curve = kl_ncnn_curve(hist, target_bins)
    best = target_bins + int(np.argmin(curve))
    return float((best + 0.5) * absmax / bins)


def kl_ncnn_curve(hist: np.ndarray, target_bins: int = 128, block: int = 32) -> np.ndarray:
    """KL(p || q) of ncnn2table for every candidate threshold bin target_bins..bins-1.

    Candidates are evaluated `block` at a time as (block, bins) arrays: the same sums as
    ncnn2table's loop over thresholds, without a Python iteration per candidate."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = hist.size
    c = hist / hist.sum()
    cum = np.concatenate(([0.0], np.cumsum(c)))
    eps = 1e-4

    def mass_below(t: np.ndarray) -> np.ndarray:  # cumulative of c, linear inside a bin
        k = np.minimum(np.floor(t).astype(np.int64), bins - 1)
        return cum[k] + (t - k) * c[k]

    j = np.arange(target_bins + 1)
    out = np.empty(bins - target_bins)
    for start in range(target_bins, bins, block):
        thr = np.arange(start, min(start + block, bins))
        k = np.arange(thr[-1], dtype=np.float64)  # every bin below the block's last candidate
        width = (thr / target_bins)[:, None]
        bounds = j[None, :] * width
        bounds[:, -1] = thr
        q = np.diff(mass_below(bounds), axis=1) / width  # mean density of each merged bin
        rows = np.arange(thr.size)[:, None]
        g0 = np.minimum((k[None, :] / width).astype(np.int64), target_bins - 1)
        inside = np.minimum(k + 1.0, bounds[rows, g0 + 1]) - k
        g1 = np.minimum(g0 + 1, target_bins - 1)
        spill = np.where(g0 + 1 < target_bins, q[rows, g1] * (1.0 - inside), 0.0)
        expand = eps + q[rows, g0] * inside + spill
        p = np.broadcast_to(eps + c[: k.size], expand.shape).copy()
        p[rows[:, 0], thr - 1] += cum[-1] - cum[thr]
        dead = k[None, :] >= thr[:, None]
        p[dead] = expand[dead] = 1.0  # bins past a candidate add log(1) = 0
        out[thr - target_bins] = (p * np.log(p / expand)).sum(axis=1)
    return out


def entropy_trt(
    stats: TensorStats, bins: int = 2048, start_bin: int = 128, num_quant_bins: int = 128
) -> float:
    """TensorRT EntropyCalibration2-like threshold (vectorized)."""
    absmax = stats.absmax
    if absmax == 0.0:
        return 0.0
    hist, edges = stats.histogram(bins=bins)
    return entropy_trt_from_histogram(hist, edges, start_bin, num_quant_bins)


def entropy_trt_from_histogram(
    hist: np.ndarray, edges: np.ndarray, start_bin: int = 128, num_quant_bins: int = 128
) -> float:
    """entropy-trt on a two-pass histogram of |x| with its bin edges."""
    kl = entropy_trt_curve(hist, start_bin, num_quant_bins)
    if not np.isfinite(kl).any():
        return float(edges[-1])
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(edges[start_bin + best])


@lru_cache(maxsize=8)
def _trt_group_bounds(start_bin: int, bins: int, nq: int) -> np.ndarray:
    """Group edges per candidate i: bin k is in group floor(k * nq / i), so group g
    starts at ceil(g * i / nq). Shape (candidates, nq + 1); read-only, shared."""
    cand = np.arange(start_bin, bins + 1)
    j = np.arange(nq + 1)
    bounds = -((-j[None, :] * cand[:, None]) // nq)
    bounds.setflags(write=False)
    return bounds


def entropy_trt_curve(
    hist: np.ndarray, start_bin: int = 128, num_quant_bins: int = 128
) -> np.ndarray:
    """The divergence of every candidate i in start_bin..bins (inf where undefined)."""
    hist = np.asarray(hist, dtype=np.float64).copy()
    bins = hist.size
    hist[0] = hist[1]
    total = hist.sum()
    cand = np.arange(start_bin, bins + 1)
    if total <= 0:
        return np.full(cand.size, np.inf)
    cum = np.concatenate(([0.0], np.cumsum(hist)))
    nz = np.concatenate(([0], np.cumsum(hist > 0)))
    plogp = np.concatenate(([0.0], np.cumsum(_xlogx(hist))))
    tail = total - cum[cand]
    last_p = hist[cand - 1] + tail
    sum_plogp = plogp[cand - 1] + _xlogx(last_p)
    bounds = _trt_group_bounds(start_bin, bins, num_quant_bins)
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    sums = np.diff(cum[bounds], axis=1)  # q's mass per group (no tail)
    counts = np.diff(nz[bounds], axis=1).astype(np.float64)
    q_total = cum[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.log(sums / counts / q_total[:, None])  # log of normalized q per group
    logq = np.where(counts > 0, logq, 0.0)
    # sum over k with hist_k > 0 of p_k * log q_k: group masses of p (tail on the last bin)
    p_mass = sums.copy()
    last_group = ends[:, -1] > starts[:, -1]  # always true for i >= nq
    last_nonempty = hist[cand - 1] > 0
    p_mass[:, -1] += np.where(last_nonempty & last_group, tail, 0.0)
    cross = np.where(counts > 0, p_mass * logq, 0.0).sum(axis=1)
    kl = sum_plogp / total - np.log(total) - cross / total
    # p > 0 where q == 0 (the last bin empty but the tail not): infinite divergence
    kl = np.where((~last_nonempty) & (tail > 0), np.inf, kl)
    return np.where(q_total > 0, kl, np.inf)


def percentile(stats: TensorStats, percentile: float = 99.99) -> float:
    """The |x| quantile: `percentile` % of all values have a smaller magnitude."""
    if not 0.0 < percentile <= 100.0:
        raise GraphkitError(f"percentile must be in (0, 100], got {percentile}")
    if stats.count == 0 or stats.exp is None:
        return stats.absmax
    if percentile == 100.0:
        return stats.absmax
    cum = np.concatenate(([0.0], np.cumsum(stats.hist.astype(np.float64))))
    target = percentile / 100.0 * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(max(k, 1), len(cum) - 1)
    lo, hi = cum[k - 1], cum[k]
    width = stats.range / stats.fine_bins
    frac = 0.0 if hi == lo else (target - lo) / (hi - lo)
    return float(min((k - 1 + frac) * width, stats.absmax))


def mse(stats: TensorStats, bins: int = 2048, start_bin: int = 128, stride: int = 1) -> float:
    """The threshold minimizing the expected int8 squared error over the histogram."""
    absmax = stats.absmax
    if absmax == 0.0:
        return 0.0
    hist, edges = stats.histogram(bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    keep = hist > 0
    c, w = centers[keep], hist[keep]
    cand = centers[start_bin::stride]
    best_err, best = np.inf, absmax
    for chunk in np.array_split(cand, max(1, len(cand) // 256)):
        s = chunk[:, None] / QMAX
        q = np.clip(np.round(c[None, :] / s), -QMAX, QMAX) * s
        err = ((q - c[None, :]) ** 2 * w[None, :]).sum(axis=1)
        i = int(np.argmin(err))
        if err[i] < best_err:
            best_err, best = float(err[i]), float(chunk[i])
    return best


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


CALIBRATORS: dict[str, Callable[..., float]] = {
    "minmax": minmax,
    "kl-ncnn": kl_ncnn,
    "entropy-trt": entropy_trt,
    "percentile": percentile,
    "mse": mse,
}
ALIASES = {"entropy": "entropy-trt", "kl": "kl-ncnn", "max": "minmax"}


def canonical_method(method: str) -> str:
    """The registered name of a method or alias, or a GraphkitError listing them."""
    name = ALIASES.get(method, method)
    if name not in CALIBRATORS:
        known = ", ".join(sorted([*CALIBRATORS, *ALIASES]))
        raise GraphkitError(f"unknown calibration method '{method}' (known: {known})")
    return name


def threshold(method: str, stats: TensorStats, **settings) -> float:
    """amax of one tensor by the named method; settings are the method's keyword options."""
    name = canonical_method(method)
    fn = CALIBRATORS[name]
    if name != "minmax" and not stats.has_histogram:
        raise GraphkitError(f"method '{name}' needs histograms; these statistics have min/max only")
    try:
        return float(fn(stats, **settings))
    except TypeError as exc:
        raise GraphkitError(f"bad setting for method '{method}': {exc}") from None
