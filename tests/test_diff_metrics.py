"""Streaming diff metrics against values computed by hand."""

import math

import numpy as np
import pytest

from graphkit.errors import GraphkitError
from graphkit.metrics import RunningDiff


def test_metrics_match_hand_computed_values():
    ref = np.array([3.0, 4.0])  # |ref|^2 = 25
    q = np.array([3.0, 5.0])  # err = (0, 1), |err|^2 = 1, |q|^2 = 34, ref.q = 29
    d = RunningDiff()
    d.update(ref, q)
    assert d.sqnr_db == pytest.approx(10 * math.log10(25 / 1))
    assert d.cosine == pytest.approx(29 / math.sqrt(25 * 34))
    assert d.rel_l2 == pytest.approx(1 / 5)
    assert d.max_abs_err == 1.0
    assert d.mse == 0.5


def test_streaming_over_images_equals_metrics_of_the_concatenation():
    rng = np.random.default_rng(0)
    refs = [rng.normal(size=(3, 4, 5)) for _ in range(4)]
    qs = [r + rng.normal(scale=0.1, size=r.shape) for r in refs]
    d = RunningDiff()
    for r, q in zip(refs, qs):
        d.update(r, q)
    R, Q = np.concatenate([r.ravel() for r in refs]), np.concatenate([q.ravel() for q in qs])
    E = Q - R
    assert d.sqnr_db == pytest.approx(10 * np.log10((R @ R) / (E @ E)))
    assert d.cosine == pytest.approx((R @ Q) / np.linalg.norm(R) / np.linalg.norm(Q))
    assert d.rel_l2 == pytest.approx(np.linalg.norm(E) / np.linalg.norm(R))
    assert d.max_abs_err == pytest.approx(np.abs(E).max())
    assert d.samples == 4 and d.elements == R.size


def test_merge_of_halves_equals_the_whole():
    rng = np.random.default_rng(1)
    pairs = [(rng.normal(size=10), rng.normal(size=10)) for _ in range(6)]
    whole, a, b = RunningDiff(), RunningDiff(), RunningDiff()
    for i, (r, q) in enumerate(pairs):
        whole.update(r, q)
        (a if i < 3 else b).update(r, q)
    m = a.merge(b)
    assert m.sqnr_db == pytest.approx(whole.sqnr_db)
    assert m.max_abs_err == whole.max_abs_err and m.samples == whole.samples


def test_identical_tensors_report_infinite_sqnr_as_json_null():
    d = RunningDiff()
    d.update(np.ones(4), np.ones(4))
    assert d.sqnr_db == math.inf
    m = d.metrics()
    assert m["sqnr_db"] is None and m["identical"] is True and m["cosine"] == 1.0


def test_size_mismatch_names_the_tensor():
    with pytest.raises(GraphkitError, match="'conv1'"):
        RunningDiff().update(np.zeros(4), np.zeros(5), "conv1")


def test_float32_activations_are_summed_as_accurately_as_float64():
    rng = np.random.default_rng(2)
    ref = (rng.standard_normal(300_001) + 3).astype(np.float32)
    q = (ref + rng.standard_normal(ref.size) * 1e-3).astype(np.float32)
    d = RunningDiff()
    d.update(ref, q)
    R, Q = ref.astype(np.float64), q.astype(np.float64)
    assert d.sum_ref2 == pytest.approx(R @ R, rel=1e-7)
    assert d.sum_err2 == pytest.approx((Q - R) @ (Q - R), rel=1e-5)
    assert 1 - d.cosine == pytest.approx(1 - (R @ Q) / np.sqrt((R @ R) * (Q @ Q)), rel=0.05)


def test_squared_error_of_float32_outputs_matches_a_float64_sum_and_is_zero_when_equal():
    from graphkit.metrics import squared_error

    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 7, 300, 101)).astype(np.float32)  # several 64K chunks
    b = a + (rng.standard_normal(a.shape) * 1e-3).astype(np.float32)
    want = float(np.sum(np.square(a.astype(np.float64) - b.astype(np.float64))))
    assert squared_error(a, b) == pytest.approx(want, rel=1e-6)  # 1e-6 dB
    assert squared_error(a, a.copy()) == 0.0  # a float candidate scores +inf dB
    assert squared_error(a.astype(np.float64), b) == pytest.approx(want, rel=1e-12)
