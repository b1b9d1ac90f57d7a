"""Calibrators on distributions whose right answer is known; weight ranges per channel."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import onnx
import pytest
from onnx import helper

from graphkit.errors import GraphkitError
from graphkit.quant.calibrators import (
    CALIBRATORS,
    canonical_method,
    kl_ncnn_from_histogram,
    threshold,
)
from graphkit.quant.observers import TensorStats
from graphkit.quant.weights import weight_amax, weight_axis


def _stats(x: np.ndarray, parts: int = 4) -> TensorStats:
    s = TensorStats()
    for p in np.array_split(x.astype(np.float32), parts):
        s.update(p)
    return s


@pytest.fixture(scope="module")
def gauss() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)


@pytest.fixture(scope="module")
def gauss_outlier(gauss) -> np.ndarray:
    return np.concatenate([gauss[:200_000], np.float32([40.0, -38.0])])


def test_minmax_of_uniform_is_its_max():
    x = np.random.default_rng(1).uniform(-3, 2, 100_000).astype(np.float32)
    assert threshold("minmax", _stats(x)) == pytest.approx(float(np.abs(x).max()))


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_of_gaussian_matches_analytic_quantile(gauss, p):
    expected = NormalDist().inv_cdf(0.5 + p / 200)  # |x| quantile of N(0, 1)
    tol = 0.02 if p < 99.99 else 0.06  # the sample quantile's own noise at 1e6 samples
    assert threshold("percentile", _stats(gauss), percentile=p) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("method", ["kl-ncnn", "entropy-trt", "percentile"])
def test_histogram_methods_clip_an_outlier(gauss_outlier, method):
    s = _stats(gauss_outlier)
    amax = threshold(method, s)
    assert 1.5 < amax < 0.25 * s.absmax


@pytest.mark.parametrize("method", ["kl-ncnn", "entropy-trt", "mse"])
def test_histogram_methods_keep_most_of_a_uniform_range(method):
    x = np.random.default_rng(2).uniform(-1, 1, 300_000).astype(np.float32)
    assert threshold(method, _stats(x)) > 0.9


def test_mse_clips_outliers_only_when_they_cost_less_than_the_resolution_they_take(gauss):
    few = _stats(np.concatenate([gauss, np.float32([40.0, -38.0])]))  # 2 in 1e6: clip them
    assert 1.5 < threshold("mse", few) < 10.0
    many = _stats(np.concatenate([gauss[:1000], np.full(50, 40.0, np.float32)]))  # 5%: keep
    assert threshold("mse", many) > 35.0


def test_mse_is_between_clipping_everything_and_nothing_for_a_gaussian(gauss):
    s = _stats(gauss)
    amax = threshold("mse", s)
    assert 2.0 < amax < s.absmax  # int8-optimal clip of N(0,1) is near 2.5-3 sigma


def _kl_ncnn_literal(hist: np.ndarray, absmax: float, target: int) -> float:
    """Direct transcription of ncnn2table's loops (fractional merge, 1e-4 smoothing)."""
    nb = len(hist)
    h = hist / hist.sum()
    best, best_kl = target, math.inf
    for thr in range(target, nb):
        clip = h[:thr] + 1e-4
        clip[-1] += h[thr:].sum()
        width = thr / target
        quant = np.zeros(target)
        expand = np.full(thr, 1e-4)
        for j in range(target):
            start, end = j * width, (thr if j == target - 1 else (j + 1) * width)
            for k in range(math.floor(start), math.ceil(end)):
                overlap = min(k + 1, end) - max(k, start)
                quant[j] += overlap * h[k]
            quant[j] /= end - start
            for k in range(math.floor(start), math.ceil(end)):
                expand[k] += (min(k + 1, end) - max(k, start)) * quant[j]
        kl = float(np.sum(clip * np.log(clip / expand)))
        if kl < best_kl:
            best, best_kl = thr, kl
    return (best + 0.5) * absmax / nb


def test_kl_ncnn_vectorized_equals_literal_loops():
    rng = np.random.default_rng(5)
    x = np.abs(np.concatenate([rng.laplace(size=50_000), [30.0]]))
    hist, _ = np.histogram(x, 256, range=(0, x.max()))
    got = kl_ncnn_from_histogram(hist.astype(float), x.max(), target_bins=32)
    assert got == pytest.approx(_kl_ncnn_literal(hist.astype(float), x.max(), 32))


def test_all_zero_tensor_gives_zero_threshold_for_every_method():
    s = TensorStats()
    s.update(np.zeros(100, np.float32))
    for method in CALIBRATORS:
        assert threshold(method, s) == 0.0


def test_aliases_and_unknown_method():
    assert canonical_method("entropy") == "entropy-trt"
    assert canonical_method("kl") == "kl-ncnn"
    with pytest.raises(GraphkitError, match="unknown calibration method 'kld'"):
        threshold("kld", TensorStats())


def test_bad_settings_are_one_sentence_errors(gauss):
    with pytest.raises(GraphkitError, match="percentile must be in"):
        threshold("percentile", _stats(gauss[:1000]), percentile=120)
    with pytest.raises(GraphkitError, match="bad setting"):
        threshold("minmax", _stats(gauss[:1000]), percentile=99)


def test_weight_amax_per_output_channel_and_per_tensor():
    w = np.zeros((3, 2, 2, 2), np.float32)
    w[0, 1, 0, 0], w[1, 0, 1, 1], w[2, 1, 1, 0] = -4.0, 0.5, 2.0
    assert weight_amax(w).tolist() == [4.0, 0.5, 2.0]
    assert weight_amax(w, axis=1).tolist() == [0.5, 4.0]
    assert weight_amax(w, per_channel=False).tolist() == [4.0]


def test_weight_axis_per_layer_kind():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=8)  # depthwise: per group
    deconv = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    gemm_t = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    gemm = helper.make_node("Gemm", ["x", "w"], ["y"])
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"])
    assert weight_axis(conv, 4) == 0
    assert weight_axis(deconv, 4) == 1
    assert weight_axis(gemm_t, 2) == 0
    assert weight_axis(gemm, 2) == 1
    assert weight_axis(matmul, 3) == 2
    with pytest.raises(GraphkitError):
        weight_axis(onnx.helper.make_node("Relu", ["x"], ["y"]), 4)
