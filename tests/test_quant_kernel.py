"""The compiled histogram kernel gives exactly the statistics of the numpy reference path,
and the executor hands it onnxruntime's buffers without copying them."""

from __future__ import annotations

import os
import threading

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper

from graphkit.quant.collect import Executor, collect
from graphkit.quant.observers import TensorStats, compiled_kernel

KERNEL = compiled_kernel()
needs_kernel = pytest.mark.skipif(
    KERNEL is None, reason="graphkit.quant._histogram was not built (no C compiler at install)"
)

# every kind of float32: NaN, +-inf, -0.0, subnormals, huge and tiny magnitudes
any_float = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
tensors = st.lists(
    st.tuples(
        arrays(np.float32, st.integers(0, 20_000), elements=any_float, fill=any_float),
        st.sampled_from([1.0, 1e-30, 1e30, 3.0]),
    ),
    min_size=1,
    max_size=5,
)


def _numpy_stats(parts, bins: int, monkeypatch) -> TensorStats:
    monkeypatch.setenv("GRAPHKIT_NUMPY_HISTOGRAM", "1")
    s = TensorStats(bins=bins)
    for arr, scale in parts:
        with np.errstate(all="ignore"):
            s.update(arr * np.float32(scale))
    monkeypatch.delenv("GRAPHKIT_NUMPY_HISTOGRAM")
    return s


def _kernel_stats(parts, bins: int) -> TensorStats:
    s = TensorStats(bins=bins)
    for arr, scale in parts:
        with np.errstate(all="ignore"):
            s.update(arr * np.float32(scale))
    return s


def test_compiled_kernel_is_built_where_ci_installs_the_package():
    if not os.environ.get("CI") and KERNEL is None:
        pytest.skip("no C extension here (install with a C compiler to build it)")
    assert KERNEL is not None, "the C histogram kernel must be built by `pip install -e .`"


@needs_kernel
@settings(max_examples=120, deadline=None)
@given(tensors, st.sampled_from([8, 64, 2048]))
def test_kernel_statistics_equal_the_numpy_reference(parts, bins):
    with pytest.MonkeyPatch.context() as mp:
        reference = _numpy_stats(parts, bins, mp)
    assert _kernel_stats(parts, bins) == reference


@needs_kernel
def test_kernel_equals_numpy_on_relu_like_tensors_with_growing_ranges(monkeypatch):
    rng = np.random.default_rng(0)
    parts = []
    for scale in (0.5, 6.0, 0.01, 700.0):  # the range grows twice inside the stream
        x = rng.normal(size=(3, 17, 33, 29)).astype(np.float32)
        parts.append((np.maximum(x, 0), scale))  # 50 % exact zeros, no negatives
        parts.append((x, scale))
    reference = _numpy_stats(parts, 2048, monkeypatch)
    got = _kernel_stats(parts, 2048)
    assert got == reference
    assert got.zeros > 0 and got.hist.sum() == got.count


@needs_kernel
def test_kernel_grows_the_range_inside_one_tensor_exactly(monkeypatch):
    # small values first, a large one in a later chunk: the histogram is re-binned mid-tensor
    x = np.full(100_000, 0.001, np.float32)
    x[-1] = 1000.0
    reference = _numpy_stats([(x, 1.0)], 2048, monkeypatch)
    assert _kernel_stats([(x, 1.0)], 2048) == reference


@needs_kernel
def test_kernel_rejects_wrong_buffers_with_a_type_error():
    hist = np.zeros(64, np.int64)
    with pytest.raises(TypeError):
        KERNEL(np.zeros(4, np.float64), hist, None)
    with pytest.raises(TypeError):
        KERNEL(np.zeros(4, np.float32), np.zeros(63, np.int64), None)


@needs_kernel
def test_kernel_lets_other_threads_run_while_it_counts():
    # with the GIL released, a Python thread makes progress during one long kernel call
    x = np.random.default_rng(1).random(30_000_000, dtype=np.float32)
    hist = np.zeros(8192, np.int64)
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=tick)
    t.start()
    before = len(ticks)
    KERNEL(x, hist, None)
    during = len(ticks) - before
    done.set()
    t.join()
    assert hist.sum() == x.size
    assert during > 1000


def _two_conv_model() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32) / 27)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ReduceMean", ["r1"], ["y"], keepdims=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_executor_views_stay_valid_after_the_next_run():
    model = _two_conv_model()
    execute = Executor(model, ["c1", "r1"])
    rng = np.random.default_rng(2)
    a = {"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
    b = {"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
    first = execute(a)
    expected = {k: v.copy() for k, v in first.items()}
    second = execute(b)  # onnxruntime may reuse memory: the first views must not change
    for k, value in expected.items():
        np.testing.assert_array_equal(first[k], value)
    assert not np.array_equal(first["c1"], second["c1"])
    reference = execute.session.run(["c1", "r1"], a)
    np.testing.assert_array_equal(first["c1"], reference[0])
    np.testing.assert_array_equal(first["r1"], reference[1])


def test_serial_parallel_and_overlapped_collection_give_identical_statistics(monkeypatch):
    model = _two_conv_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(5)]
    tensors = ["x", "c1", "r1"]
    serial = collect(model, lambda: iter(feeds), tensors, bins=256, observers=1)
    parallel = collect(model, lambda: iter(feeds), tensors, bins=256, observers=3)
    overlapped = collect(model, lambda: iter(feeds), tensors, bins=256, overlap=True)
    monkeypatch.setenv("GRAPHKIT_NUMPY_HISTOGRAM", "1")
    numpy_path = collect(model, lambda: iter(feeds), tensors, bins=256)
    assert serial == parallel == overlapped == numpy_path


@needs_kernel
def test_kernel_skips_exact_zeros_including_negative_zero_like_numpy(monkeypatch):
    # chunks with many exact zeros take the path that packs the non-zero values first
    rng = np.random.default_rng(6)
    x = rng.normal(size=50_000).astype(np.float32)
    x[rng.random(x.size) < 0.3] = 0.0
    x[rng.random(x.size) < 0.1] = -0.0
    x[:5000] = 0.0  # whole chunks of zeros too
    reference = _numpy_stats([(x, 1.0), (x, 5.0)], 2048, monkeypatch)
    got = _kernel_stats([(x, 1.0), (x, 5.0)], 2048)
    assert got == reference and got.zeros == reference.zeros > 0.3 * 2 * x.size
