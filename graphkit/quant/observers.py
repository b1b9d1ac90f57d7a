"""Streaming, mergeable statistics of activation tensors: min, max and a |x| histogram.

Design (one pass, exact merge): the histogram covers [0, R) where R is always a power of
two, R = 2**e with absmax < R. It has `4 * bins` equal bins, so every bin edge is a dyadic
number and the bin of a value is floor(|x| * 2**k) computed exactly in float. When a new
batch has a larger absmax, R grows to the next power of two above it and groups of 2**j
adjacent bins are summed (no information is invented, none is lost beyond what the
coarser bins hold). Two observers with different R merge exactly the same way, so the
statistics of two halves of a dataset merged are *identical* to those of the whole: this
is what makes `--workers N` correct.

Calibrators want the two-pass layout of ncnn / TensorRT (`bins` bins over [0, absmax],
absmax known before histogramming). `TensorStats.histogram()` re-bins the fine histogram
into that layout assuming a uniform density inside each fine bin. Because R < 2 * absmax,
a fine bin is at most half a two-pass bin wide: cumulative counts, and so quantile
thresholds, agree with a two-pass run within one bin, at half the inference cost (one
pass). KL thresholds are argmins of nearly flat curves: the bin may move, the divergence
at the chosen bin stays within 1 % of the two-pass optimum (tested).

Speed: the counting runs in a small C extension (`_histogram.c`: one read of the tensor,
~1 ns per value, GIL released so that one thread per core can count) with the same
arithmetic as the numpy path below (~2.6 ns per value), which stays as the fallback where
no compiler was available at install time, and as the reference the tests compare against.

Memory: 64 KB per tensor (8192 int64 bins) plus small scratch buffers reused across
tensors: activations are never accumulated.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048
MAX_BINS = 65536  # one histogram per tensor holds this many counts (times FINE_FACTOR)
FINE_FACTOR = 4  # fine bins per calibration bin: keeps re-binning error below half a bin

_scratch = threading.local()


def check_bins(bins: object, what: str = "histogram bins") -> int:
    """`bins` when it is a power of two from 8 to MAX_BINS, else GraphkitError naming `what`."""
    from graphkit.errors import InputError

    if (
        isinstance(bins, bool)
        or not isinstance(bins, int)
        or not 8 <= bins <= MAX_BINS
        or bins & (bins - 1)
    ):
        raise InputError(f"{what} must be a power of two from 8 to {MAX_BINS}, got {bins!r}")
    return bins


def _load_kernel() -> Callable | None:
    try:
        from graphkit.quant._histogram import update_f32
    except ImportError:
        return None
    return update_f32


_KERNEL = _load_kernel()


def compiled_kernel() -> Callable | None:
    """`graphkit.quant._histogram.update_f32` if the C extension was built, else None.

    GRAPHKIT_NUMPY_HISTOGRAM=1 forces the numpy path (tests compare the two; benchmarks
    show the difference)."""
    if os.environ.get("GRAPHKIT_NUMPY_HISTOGRAM", "") not in ("", "0"):
        return None
    return _KERNEL


def _scratch_buffer(n: int, dtype: type) -> np.ndarray:
    """A per-thread reusable buffer of at least n elements (avoids page-faulting new arrays)."""
    key = np.dtype(dtype).str
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    buf = pool.get(key)
    if buf is None or buf.size < n:
        buf = pool[key] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n]


def _no_histogram() -> np.ndarray:
    """Default of TensorStats.hist: empty until __post_init__ knows the number of bins."""
    return np.zeros(0, dtype=np.int64)


def _exponent_above(value: float) -> int:
    """The smallest e with value < 2**e (value > 0)."""
    return math.frexp(value)[1]


@dataclass
class TensorStats:
    """Per-tensor streaming statistics; `update` per sample, `merge` across shards."""

    bins: int = DEFAULT_BINS
    min: float = math.inf
    max: float = -math.inf
    count: int = 0  # finite elements seen
    zeros: int = 0  # elements exactly 0 (ncnn's KL skips them)
    nonfinite: int = 0  # NaN / inf elements seen (skipped)
    samples: int = 0  # update() calls
    has_histogram: bool = True  # False when only min/max were observed (update_range)
    exp: int | None = None  # histogram range is [0, 2**exp); None until a nonzero value
    hist: np.ndarray = field(default_factory=_no_histogram)  # empty: allocated in __post_init__

    def __post_init__(self) -> None:
        if self.bins < 8 or self.bins & (self.bins - 1):
            raise ValueError(f"bins must be a power of two >= 8, got {self.bins}")
        if self.hist.size == 0:
            self.hist = np.zeros(self.fine_bins, dtype=np.int64)

    @property
    def fine_bins(self) -> int:
        return self.bins * FINE_FACTOR

    @property
    def absmax(self) -> float:
        if self.count == 0:
            return 0.0
        return float(max(-self.min, self.max))

    @property
    def range(self) -> float:
        """Upper edge R of the fine histogram (0 while every value seen was 0)."""
        return 0.0 if self.exp is None else math.ldexp(1.0, self.exp)

    def fine_edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range, self.fine_bins + 1)

    # -- updating ---------------------------------------------------------------------
    def _grow(self, exp: int) -> None:
        if self.exp is None:
            self.exp = exp
            return
        if exp <= self.exp:
            return
        self.hist = _downsample(self.hist, exp - self.exp)
        self.exp = exp

    def update(self, x: np.ndarray) -> None:
        """Add one tensor (any shape); float16/64 are read as float32, ints are cast."""
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        kernel = compiled_kernel()
        if kernel is not None:
            self._update_compiled(kernel, np.ascontiguousarray(x))
        else:
            self._update_numpy(x.reshape(-1))

    def _update_compiled(self, kernel: Callable, x: np.ndarray) -> None:
        """The C kernel: one read of x, GIL released; same statistics as _update_numpy."""
        lo, hi, finite, zeros, nonfinite, exp = kernel(x, self.hist, self.exp)
        self.samples += 1
        self.nonfinite += nonfinite
        self.zeros += zeros
        self.exp = exp
        if finite:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
            self.count += finite

    def _update_numpy(self, x: np.ndarray) -> None:
        """The reference implementation (no compiler needed): numpy, chunk by chunk."""
        self.samples += 1
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(x.size)
        amax = max(-lo, hi)
        if amax == 0.0:
            self.hist[0] += x.size
            self.zeros += int(x.size)
            return
        self._grow(_exponent_above(amax))
        assert self.exp is not None  # _grow set it
        counts, zeros = _bin_counts(x, self.exp, self.fine_bins, nonnegative=lo >= 0.0)
        self.hist += counts
        self.zeros += zeros

    def update_range(self, lo: float, hi: float, size: int) -> None:
        """Record only a tensor's min, max and size (from in-graph reductions).

        Enough for minmax; a TensorStats updated this way has no histogram."""
        self.samples += 1
        self.has_histogram = False
        if size == 0:
            return
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.count += int(size)

    # -- merging ----------------------------------------------------------------------
    def merge(self, other: TensorStats) -> TensorStats:
        """A new TensorStats equal to having seen both streams (exact)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        out = TensorStats(bins=self.bins)
        out.min = min(self.min, other.min)
        out.max = max(self.max, other.max)
        out.count = self.count + other.count
        out.zeros = self.zeros + other.zeros
        out.nonfinite = self.nonfinite + other.nonfinite
        out.samples = self.samples + other.samples
        out.has_histogram = self.has_histogram and other.has_histogram
        exps = [e for e in (self.exp, other.exp) if e is not None]
        out.exp = max(exps) if exps else None
        hist = np.zeros(self.fine_bins, dtype=np.int64)
        for s in (self, other):
            if s.exp is None:
                hist += s.hist
            else:
                assert out.exp is not None  # the max of the exps, s.exp among them
                hist += _downsample(s.hist, out.exp - s.exp)
        out.hist = hist
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        return (
            self.bins == other.bins
            and self.min == other.min
            and self.max == other.max
            and self.count == other.count
            and self.zeros == other.zeros
            and self.nonfinite == other.nonfinite
            and self.samples == other.samples
            and self.exp == other.exp
            and self.has_histogram == other.has_histogram
            and np.array_equal(self.hist, other.hist)
        )

    # -- views for calibrators ----------------------------------------------------------
    def histogram(
        self, bins: int | None = None, upper: float | None = None, skip_zeros: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(counts float64, edges) of |x| over [0, upper] (default absmax) in `bins` bins.

        The two-pass layout of ncnn2table / TensorRT, re-binned from the fine histogram by
        linear interpolation of its cumulative counts. Values above `upper` go to the last
        bin. skip_zeros drops exact zeros (ncnn's KL does).
        """
        if not self.has_histogram:
            raise ValueError("these statistics hold min/max only (collected without histograms)")
        bins = bins or self.bins
        upper = self.absmax if upper is None else float(upper)
        edges = np.linspace(0.0, upper, bins + 1)
        if self.count == 0 or upper <= 0.0:
            counts = np.zeros(bins)
            if upper > 0.0 or self.count:
                counts[0] = self.count - (self.zeros if skip_zeros else 0)
            return counts, edges
        fine = self.hist.astype(np.float64)
        if skip_zeros:
            fine[0] -= self.zeros
        cum = np.concatenate(([0.0], np.cumsum(fine)))
        if self.exp is None:  # only zeros
            counts = np.zeros(bins)
            counts[0] = cum[-1]
            return counts, edges
        at = np.interp(edges, self.fine_edges(), cum)
        at[-1] = cum[-1]  # everything above `upper` lands in the last bin
        counts = np.diff(at)
        np.maximum(counts, 0.0, out=counts)
        return counts, edges


def _downsample(hist: np.ndarray, shift: int) -> np.ndarray:
    """The histogram over a range 2**shift times larger: sum groups of 2**shift bins."""
    if shift <= 0:
        return hist.copy()
    n = hist.size
    out = np.zeros(n, dtype=hist.dtype)
    if shift >= int(math.log2(n)):
        out[0] = hist.sum()
        return out
    group = 1 << shift
    out[: n // group] = hist.reshape(n // group, group).sum(axis=1)
    return out


CHUNK = 1 << 16  # elements per histogram step: the scratch buffers stay in cache


def _bin_counts(
    x: np.ndarray, exp: int, fine_bins: int, nonnegative: bool = False
) -> tuple[np.ndarray, int]:
    """(counts of floor(|x| * fine_bins / 2**exp), number of exact zeros).

    Exact: the scale is a power of two, and every index is < fine_bins since
    absmax < 2**exp. One ufunc scales and truncates straight into an int32 buffer
    (truncation toward zero then abs == floor of |x|; the abs is skipped when no value is
    negative, as after a ReLU). int32 rather than intp: float32 -> int32 conversion is
    vectorized, float32 -> int64 is not (0.4 against 1.0 ns per element measured), which
    more than pays for the widening np.bincount does. Chunks keep the buffers in cache.
    np.bincount itself (~1.5 ns per element, holding the GIL) is most of what is left.
    """
    scale: float | np.float32 = math.ldexp(float(fine_bins), -exp)
    if scale > 1e37:  # tiny (subnormal) ranges: float32 would overflow, use float64
        x = x.astype(np.float64)
    else:
        scale = np.float32(scale)
    buf = _scratch_buffer(min(x.size, CHUNK), np.int32)
    counts = np.zeros(fine_bins, dtype=np.int64)
    nonzero = 0
    for start in range(0, x.size, CHUNK):
        part = x[start : start + CHUNK]
        idx = buf[: part.size]
        np.multiply(part, scale, out=idx, casting="unsafe")
        if not nonnegative:
            np.abs(idx, out=idx)
        chunk = np.bincount(idx, minlength=fine_bins)
        counts += chunk[:fine_bins]
        # every exact zero lands in bin 0: no need to look for zeros when it is empty
        nonzero += int(np.count_nonzero(part)) if chunk[0] else part.size
    return counts, x.size - nonzero


def collect_stats(
    batches: Iterable[dict[str, np.ndarray]],
    bins: int = DEFAULT_BINS,
    stats: dict[str, TensorStats] | None = None,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, TensorStats]:
    """Statistics of every tensor in a stream of {name: array} dicts (any executor).

    Each dict is dropped as soon as it is observed, so memory stays at one sample's tensors.
    Non-float tensors are ignored. Pass `stats` to continue an earlier collection.
    """
    stats = {} if stats is None else stats
    for batch in batches:
        for name, value in batch.items():
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                continue
            obs = stats.get(name)
            if obs is None:
                obs = stats[name] = TensorStats(bins=bins)
            obs.update(value)
        if on_sample is not None:
            on_sample()
    return stats


def merge_all(parts: Iterable[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Merge per-shard statistics dicts (tensors missing in a shard are fine)."""
    out: dict[str, TensorStats] = {}
    for part in parts:
        for name, s in part.items():
            out[name] = s if name not in out else out[name].merge(s)
    return out
